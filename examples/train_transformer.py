"""Train a small transformer language model on the simulated 2x4 mesh, checkpoint it, and
resume on another mesh.

The task is a shifted copy: each position must predict the token one position before it (with
learned position embeddings), which one attention layer learns. One compiled step holds the
forward pass, the backward pass (`dtc.value_and_grad`) and an Adam update
(`dtc.optim.adam`), planned together: Megatron
tensor parallelism over ``tp`` (column-parallel qkv and w1, row-parallel wo and w2), data
parallelism over ``dp``. Parameters and optimizer state are `DVariable`s, saved with a
`DTensorCheckpoint` every `SAVE_EVERY` steps.

Run: ``python examples/train_transformer.py`` trains `STEPS` steps on ``dp=2, tp=4``, printing
the loss at each checkpoint; checks that resuming from the last checkpoint on the same mesh
gives bit-identical losses; then restores it onto a 1-D mesh of 8 (every parameter replicated,
the batch split 8 ways) and trains on: the loss goes on falling from where it was.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transformer  # noqa: E402

import dtensor_compiler as dtc  # noqa: E402

VOCAB, SEQ, DIM, HIDDEN, HEADS, LAYERS, BATCH = 16, 8, 32, 64, 2, 1, 16
STEPS, SAVE_EVERY, LR = 60, 20, 0.01
U = dtc.UNSHARDED


def loss(embed, position, *rest):
    """Mean cross-entropy of the logits against one-hot targets."""
    *blocks, unembed, tokens, targets = rest
    x = np.take(embed, tokens, axis=0) + position
    x = transformer.make_forward(LAYERS, HEADS)(x, *blocks)
    logits = x @ unembed
    top = logits.max(-1, keepdims=True)
    logz = np.log(np.exp(logits - top).sum(-1, keepdims=True)) + top
    return np.mean(np.sum((logz - logits) * targets, axis=-1))


def init_params(rng: np.random.Generator) -> list[np.ndarray]:
    shapes = [(VOCAB, DIM), (SEQ, DIM)]
    shapes += [s.shape for s in transformer.specs(1, 1, DIM, HIDDEN, LAYERS)[1:]]
    shapes.append((DIM, VOCAB))
    return [np.ones(s, np.float32) if len(s) == 1 else
            (rng.standard_normal(s) * 0.3 / np.sqrt(s[0])).astype(np.float32) for s in shapes]


def layouts(mesh: dtc.Mesh) -> tuple[dtc.Layout, ...]:
    """The parameters' layouts: tensor-parallel blocks on a dp x tp mesh, replicated on any
    other mesh."""
    if "tp" in mesh.dim_names:
        blocks = transformer.layouts(mesh, LAYERS)[0][1:]
    else:
        blocks = tuple(dtc.Layout.replicated(mesh, len(s.shape))
                       for s in transformer.specs(1, 1, DIM, HIDDEN, LAYERS)[1:])
    rep = dtc.Layout.replicated(mesh, 2)
    return (rep, rep, *blocks, rep)


def batch(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tokens = rng.integers(0, VOCAB, (BATCH, SEQ))
    targets = np.eye(VOCAB, dtype=np.float32)[np.roll(tokens, 1, axis=1)]
    return tokens, targets


class Trainer:
    """Parameters, Adam state and the compiled step on one mesh."""

    def __init__(self, mesh: dtc.Mesh, params: list[np.ndarray]) -> None:
        self.mesh = mesh
        self.layouts = layouts(mesh)
        self.opt = dtc.optim.adam(LR)
        self.params = [dtc.DVariable(p, lay) for p, lay in zip(params, self.layouts)]
        state = self.opt.init(params, layouts=self.layouts)
        self.m = [dtc.DVariable(s, lay) for s, lay in zip(state["m"], self.layouts)]
        self.v = [dtc.DVariable(s, lay) for s, lay in zip(state["v"], self.layouts)]
        self.count = dtc.DVariable(state["step"], dtc.Layout([], mesh))
        data = dtc.Layout([mesh.dim_names[0], U], mesh)
        rows = dtc.Layout([mesh.dim_names[0], U, U], mesh)
        n = len(self.params)
        scalar = dtc.Layout([], mesh)
        state_layouts = self.layouts * 3 + (scalar,)

        # the parameters and optimizer state are donated: the step writes their new values
        # into their buffers, and the variables are assigned them right after
        @dtc.compile(in_layouts=state_layouts + (data, rows),
                     out_layouts=(scalar,) + state_layouts,
                     donate_argnums=tuple(range(3 * n + 1)))
        def step(*args):
            params, m, v = args[:n], args[n:2 * n], args[2 * n:3 * n]
            count, tokens, targets = args[3 * n:]
            value, grads = dtc.value_and_grad(loss, argnums=tuple(range(n)))(
                *params, tokens, targets)
            new, state = self.opt.update(params, grads, {"m": m, "v": v, "step": count})
            return (value, *new, *state["m"], *state["v"], state["step"])

        self.step = step

    def checkpoint(self) -> dtc.DTensorCheckpoint:
        return dtc.DTensorCheckpoint(self.mesh, params=self.params, m=self.m, v=self.v,
                                     count=self.count)

    def train(self, steps: int, rng: np.random.Generator) -> list[float]:
        losses = []
        for _ in range(steps):
            tokens, targets = batch(rng)
            out = self.step(*self.params, *self.m, *self.v, self.count, tokens, targets)
            losses.append(float(np.asarray(out[0])))
            for var, value in zip([*self.params, *self.m, *self.v, self.count], out[1:]):
                var.assign(value)
        return losses


def main() -> None:
    rng = np.random.default_rng(0)
    mesh = dtc.create_mesh([("dp", 2), ("tp", 4)])
    first = Trainer(mesh, init_params(rng))
    collectives = first.step.lower(*first.params, *first.m, *first.v, first.count,
                                   *batch(rng)).collectives()
    print(f"one training step on dp=2 x tp=4: {len(collectives)} collectives, "
          f"{sum(c.bytes for c in collectives)} bytes per device")
    with tempfile.TemporaryDirectory() as directory:
        ckpt = first.checkpoint()
        losses: list[float] = []
        for _ in range(STEPS // SAVE_EVERY):
            losses += first.train(SAVE_EVERY, rng)
            path = ckpt.save(f"{directory}/ckpt")
            print(f"step {len(losses):3d}  loss {losses[-1]:.4f}  saved {Path(path).name}")
        last = dtc.latest_checkpoint(directory)
        assert last is not None
        zeros = [np.zeros_like(np.asarray(p)) for p in first.params]
        on = first.train(SAVE_EVERY, np.random.default_rng(1))
        same = Trainer(mesh, zeros)
        same.checkpoint().restore(last)
        assert same.train(SAVE_EVERY, np.random.default_rng(1)) == on
        print(f"resumed from {Path(last).name} on dp=2 x tp=4: the next {SAVE_EVERY} losses "
              "are bit-identical to the run that went on")
        flat = Trainer(dtc.create_mesh([("x", 8)]), zeros)
        flat.checkpoint().restore(last)
        for _ in range(2):
            more = flat.train(SAVE_EVERY, rng)
            losses += more
            print(f"step {len(losses):3d}  loss {losses[-1]:.4f}  (resumed on x=8)")


if __name__ == "__main__":
    main()
