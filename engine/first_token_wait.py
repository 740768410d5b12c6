"""What `kdsl-llm` shows while it waits for the first token.

A device's first run compiles every kernel the model uses: on PoCL with 2
cores that is a minute or more before the first token, where a warm run
answers in seconds. Silence for that long looks like a hang, so after
`delay` seconds without a token the CLI shows the elapsed time and how many
OpenCL programs kdsl has built so far (kdsl.cache.stats), updated every half
second on a terminal and said once otherwise, and clears the line when the
first token comes.
"""
import shutil
import sys
import threading
import time

from kdsl import cache

DELAY_S = 3.0
EXPLAIN = "a device's first run compiles its kernels; later runs reuse them"


class FirstTokenWait:
    """with FirstTokenWait() as wait: ... wait.done() at the first token."""

    def __init__(self, stream=None, delay=DELAY_S, interval=0.5):
        self.stream = stream or sys.stderr
        self.delay, self.interval = delay, interval
        self._done = threading.Event()
        self._lock = threading.Lock()       # done() and the line's writes do not interleave
        self._shown = False
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._start = time.perf_counter()
        self._builds = cache.stats["builds"]
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.done()

    def done(self):
        """Stop showing the wait and clear its line (safe to call more than once)."""
        with self._lock:
            if self._done.is_set():
                return
            self._done.set()
            if self._shown and self._tty():
                self.stream.write("\r\033[K")
                self.stream.flush()

    def _tty(self):
        return hasattr(self.stream, "isatty") and self.stream.isatty()

    def _status(self):
        built = cache.stats["builds"] - self._builds
        return (f"waiting for the first token: {time.perf_counter() - self._start:.0f} s, "
                f"{built} kernel program{'s' if built != 1 else ''} built ({EXPLAIN})")

    def _watch(self):
        if self._done.wait(self.delay):
            return
        while True:
            with self._lock:
                if self._done.is_set():
                    return
                if self._tty():
                    # one terminal row: a wrapped line would not be cleared by \r
                    width = shutil.get_terminal_size((80, 24)).columns - 1
                    self.stream.write("\r\033[K" + self._status()[:width])
                elif not self._shown:
                    self.stream.write(self._status() + "\n")
                self.stream.flush()
                self._shown = True
            if not self._tty() or self._done.wait(self.interval):
                return
