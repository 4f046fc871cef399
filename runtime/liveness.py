"""Liveness of the clients: a heartbeat on the coordinator's store, and a fail-fast exit.

gloo notices a dead peer only when it talks to it, and waits up to its timeout (30 minutes by
default) for one that hangs, so every client runs a daemon thread that, every `period`
seconds, writes its beat count and progress (programs started) to the store under
``hb/<client>`` and reads everyone else's. A client whose entry has not changed for `timeout`
seconds (measured on this client's own clock, so the hosts' clocks need not agree) is dead
or hung; so is the store itself when it cannot be reached (it lives in client 0). Then this
client prints a `MultiClientError` message naming the clients and exits with status
`EXIT_CODE` at once, as the reference system does (its heartbeat is fatal): a thread cannot
interrupt a main thread blocked inside a collective, and nothing is gained by waiting. The
first client to find one dead leaves its verdict in the store for the others (`VERDICT`),
and client 0 keeps the store up until they have read it. A
client that shuts down writes `LEFT` and is no longer watched; client 0 keeps its store up
until the others have left (or stopped beating).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from dtensor_compiler.errors import first_line

EXIT_CODE = 75
"""The exit status of a client that found another one dead."""
LEFT = "left"
"""A client's last heartbeat entry, written when it shuts down."""
VERDICT = "hb/verdict"
"""Where the first client to find another dead says which."""


class Heartbeat:
    """Started by `initialize_multi_client`, stopped by `shutdown_accelerator_system`."""

    def __init__(self, store: Any, client_id: int, num_clients: int, timeout_s: float,
                 period_s: float | None = None) -> None:
        self.store = store
        self.client_id = client_id
        self.num_clients = num_clients
        self.timeout_s = timeout_s
        self.period_s = period_s if period_s is not None else min(1.0, timeout_s / 10)
        self.progress = 0
        """Programs this client has started (the executor counts them)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dtc-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()
        atexit.register(self.halt)

    def halt(self) -> None:
        """Stop the thread without a word (at interpreter exit: a thread still using the
        store then aborts the process)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5 * self.period_s + 1)

    def stop(self) -> None:
        """Stop beating, and tell the others this client left (so they do not take it for
        dead). Client 0 then keeps its store up until every other client has left too, or
        has stopped beating for the timeout (so a client still at work is not cut off)."""
        self.halt()
        atexit.unregister(self.halt)
        try:
            self.store.set(f"hb/{self.client_id}", LEFT)
            if self.client_id == 0:
                self._wait_for_the_others()
        except Exception:
            pass  # the store is gone already: nobody is left to tell

    def _wait_for_the_others(self) -> None:
        seen = {c: (b"", time.monotonic()) for c in range(1, self.num_clients)}
        while seen:
            now = time.monotonic()
            for c in list(seen):
                value = bytes(self.store.get(f"hb/{c}")) if self.store.check([f"hb/{c}"]) \
                    else b""
                if value == LEFT.encode():
                    del seen[c]
                elif value != seen[c][0]:
                    seen[c] = (value, now)
                elif now - seen[c][1] > self.timeout_s:
                    del seen[c]  # gone without leaving: nothing to wait for
            time.sleep(self.period_s)

    def _run(self) -> None:
        peers = [c for c in range(self.num_clients) if c != self.client_id]
        keys = [f"hb/{c}" for c in peers]
        seen: dict[int, tuple[bytes | None, float]] = {
            c: (None, time.monotonic()) for c in peers}
        beats = 0
        coordinator_left = False
        while not self._stop.is_set():
            beats += 1
            now = time.monotonic()
            try:
                self.store.set(f"hb/{self.client_id}", f"{beats} {self.progress}")
                present = [c for c, k in zip(peers, keys) if self.store.check([k])]
                values = dict(zip(present, self.store.multi_get([f"hb/{c}" for c in present])
                                  if present else []))
            except Exception as e:  # the store is gone: client 0 died or left
                if self._stop.is_set() or coordinator_left:
                    return
                self._fail(f"the coordinator's store (in client 0) cannot be reached: "
                           f"{first_line(e)}")
                return
            verdict = self._verdict()
            if verdict is not None:
                self._fail(verdict, publish=False)
                return
            if values.get(0) == LEFT.encode():
                coordinator_left = True  # its store stays up until everyone has left
            for c in [c for c in peers if values.get(c) == LEFT.encode()]:
                peers.remove(c)
                keys.remove(f"hb/{c}")
            stale = []
            for c in peers:
                value = values.get(c)
                last, since = seen[c]
                if value is not None and value != last:
                    seen[c] = (value, now)
                elif now - since > self.timeout_s:
                    stale.append(c)
            if stale:
                self._fail(f"client{'s' if len(stale) > 1 else ''} "
                           f"{', '.join(map(str, stale))} of {self.num_clients} sent no "
                           f"heartbeat for {self.timeout_s:g} s (dead or hung)", dead=stale)
                return
            self._stop.wait(self.period_s)

    def _verdict(self) -> str | None:
        """What another client found, if one found a client dead."""
        try:
            if self.store.check([VERDICT]):
                return bytes(self.store.get(VERDICT)).decode()
        except Exception:
            pass  # the store is gone: the next beat says so
        return None

    def _fail(self, why: str, publish: bool = True, dead: Sequence[int] = ()) -> None:
        """Print why and exit. The first client to find others `dead` leaves its verdict
        in the store; the others acknowledge it before they go, and client 0, which holds
        the store, waits (at most `timeout_s`) for every survivor's acknowledgement, so that
        each names the dead client rather than the lost store."""
        sys.stderr.write(f"dtensor_compiler.errors.MultiClientError: liveness: client "
                         f"{self.client_id} stops: {why}\n")
        sys.stderr.flush()
        try:
            if publish:
                self.store.set(VERDICT, why)
            else:
                self.store.set(f"{VERDICT}/ack/{self.client_id}", "1")
            if self.client_id == 0:
                survivors = [f"{VERDICT}/ack/{c}" for c in range(1, self.num_clients)
                             if c not in dead]
                deadline = time.monotonic() + self.timeout_s
                while survivors and time.monotonic() < deadline:
                    survivors = [k for k in survivors if not self.store.check([k])]
                    time.sleep(0.05)
        except Exception:
            pass  # the store is gone: the others find that out themselves
        os._exit(EXIT_CODE)
