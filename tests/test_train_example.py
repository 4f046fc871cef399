"""examples/train_transformer.py: the model learns, a checkpoint resumes bit-exactly on the
same mesh and goes on learning on another."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_transformer.py"


def test_the_training_example_learns_and_resumes_on_another_mesh():
    done = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True,
                          timeout=300, check=True)
    lines = done.stdout.splitlines()
    losses = [float(line.split()[3]) for line in lines if line.startswith("step")]
    assert len(losses) == 5
    assert losses[0] < 1.0 and losses[2] < 0.2  # from ln(16) = 2.77 at the start
    assert "bit-identical" in done.stdout
    assert losses[4] < losses[2]  # after resuming on x=8
