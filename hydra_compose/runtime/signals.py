"""Ctrl-C and SIGTERM: both end a command through the same cleanup (finally blocks), and the few
steps that must not be cut in half (moving generated files into place, restoring power limits)
run with both held back until they are done."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Iterator

STOP = (signal.SIGINT, signal.SIGTERM)



def sigterm_as_interrupt() -> None:
    """SIGTERM raises KeyboardInterrupt like Ctrl-C, so cleanups run (the CLI installs it once)."""

    def handler(signum, frame):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests calling commands directly)
        pass


@contextmanager
def held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block ends, then raise KeyboardInterrupt. Handlers that only
    take note are installed first, so even a signal that arrived a moment before the block (Python
    runs its handler at the next instruction) cannot cut the block in half."""
    noted: list[int] = []

    def note(signum, frame):  # noqa: ANN001, ANN202
        noted.append(signum)

    try:
        old = {s: signal.signal(s, note) for s in STOP}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if noted:
            raise KeyboardInterrupt
