"""Stopping a run between steps: SIGINT (Ctrl-C) and SIGTERM ask the training loop to stop at
the end of the current step (never in the middle of an optimiser update); a second signal
stops at once."""
import signal
import threading


class StopSignals:
    """While active, SIGINT and SIGTERM set `received` instead of interrupting; a second
    signal raises KeyboardInterrupt. Only the main thread can install signal handlers;
    elsewhere this does nothing."""

    def __init__(self):
        self.received = None
        self._old = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        return False
