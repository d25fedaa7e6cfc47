"""Progress for long-running commands: one updating line on a terminal,
plain lines (at most one every `min_interval` seconds) when output is a file or pipe."""
import sys
import time


class Progress:
    def __init__(self, stream=None, min_interval=1.0):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval = min_interval
        self._last = -float("inf")
        self._width = 0

    def update(self, text, force=False):
        now = time.perf_counter()
        if self.tty:
            pad = max(self._width - len(text), 0)
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
            self.stream.flush()
        elif force or now - self._last >= self.min_interval:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last = now

    def done(self, text=None):
        if self.tty:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        if text:
            self.stream.write(text + "\n")
        self.stream.flush()
