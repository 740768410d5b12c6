"""See the launches a block of code makes: `with kdsl.capture_launches() as launches:`.

Library wrappers (a matmul that picks a config and a grid, say) hide the
kernel launches they make. Two callers need them: a timing harness, which
times the kernels by their own profiling events rather than the host Python
around them, and an engine that replays a decode step as prepared launches
(`rec.jit_fn.prepare(rec.grid, **rec.values, num_threads=rec.num_threads)`).
Launches inside the block run as usual; each also leaves a record.
"""
import contextlib
from dataclasses import dataclass
from typing import Any

_active = []          # the record lists of the capture blocks now open (nested blocks all see a launch)


@dataclass
class LaunchRecord:
    jit_fn: Any           # the kdsl.jit kernel
    grid: tuple           # 3 ints
    values: dict          # parameter name -> the value bound to it (constexprs included)
    num_threads: Any      # as asked for (None: the default)
    event: Any            # the pyopencl.Event; None in the interpreter or for an empty grid


@contextlib.contextmanager
def capture_launches():
    """Collect a LaunchRecord for every kernel launch made inside the block.

    >>> with kdsl.capture_launches() as launches:
    ...     add_kernel[(4,)](x, y, out, n, BLOCK=256)
    >>> launches[0].grid
    (4, 1, 1)
    >>> launches[0].event.wait()     # profiling times are there once it has run
    """
    records = []
    _active.append(records)
    try:
        yield records
    finally:
        _active.remove(records)


def record(jit_fn, grid, values, num_threads, event):
    if _active:
        rec = LaunchRecord(jit_fn, grid, dict(values), num_threads, event)
        for records in _active:
            records.append(rec)
