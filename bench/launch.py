"""Host cost of one kernel launch: kdsl's paths beside a bare pyopencl enqueue.

    python3 bench/launch.py [--json FILE]

Times, per call, on the current device (back to back, the queue drained
between batches so it never fills):

- pyopencl: `cl.enqueue_nd_range_kernel` of the same compiled kernel with
  its arguments already set: the driver's floor, no Python work;
- prepared: `kernel.prepare(...)` then `step()`;
- prepared + set: `step.set(n=...)` of one scalar, then `step()`;
- launch: `kernel[grid](...)`, an ordinary launch (binds and checks the
  arguments, looks up the specialisation, sets what changed);
- wrapper: `kdsl_kernels.rms_norm(x, w, eps, out=out)`, the library call
  that makes that launch.

The kernel is kdsl_kernels' RMSNorm of one 576-wide row (a decode step's
size), whose device time is microseconds, so the host cost is what shows.
Ratios are against the pyopencl floor. Writes JSON; no plot (one number per
path).
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pyopencl as cl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kdsl  # noqa: E402
import kdsl_kernels as kk  # noqa: E402
from bench import common  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = kdsl.current_device()
    print(f"device: {device!r}")
    common.warn_if_busy()
    x = kdsl.tensor(np.ones((1, 576), np.float32))
    w = kdsl.tensor(np.ones(576, np.float32))
    out = kdsl.empty((1, 576), np.float32)
    with kdsl.capture_launches() as records:
        kk.rms_norm(x, w, 1e-5, out=out)
    rec = records[0]
    fn, grid, values = rec.jit_fn, rec.grid, rec.values
    args_in_order = [values[name] for name in fn.arg_names]
    step = fn.prepare(grid, *args_in_order, num_threads=rec.num_threads)
    n = values["N"]
    queue = device.queue
    floor_global = step._global
    floor_local = step._local
    paths = [
        ("pyopencl enqueue", lambda: cl.enqueue_nd_range_kernel(queue, step.cl_kernel,
                                                                floor_global, floor_local)),
        ("prepared", lambda: step()),
        ("prepared + set", lambda: step.set(N=n)()),
        ("launch", lambda: fn[grid](*args_in_order, num_threads=rec.num_threads)),
        ("wrapper", lambda: kk.rms_norm(x, w, 1e-5, out=out)),
    ]
    rows = []
    for name, call in paths:
        rows.append({"path": name, "us_per_call": common.batch_time(call, 2000, 5) * 1e6})
    floor = rows[0]["us_per_call"]
    for row in rows:
        row["vs_pyopencl"] = row["us_per_call"] / floor
    print(f"\nhost time per call of {fn.__name__} (grid {grid}); x pyopencl = multiple "
          "of the bare enqueue")
    common.print_table(rows, [("path", "path", "{}"), ("us_per_call", "us per call", "{:.1f}"),
                              ("vs_pyopencl", "x pyopencl", "{:.1f}")])
    path = common.write_results("launch", device, rows, {"kernel": fn.__name__}, args.json)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
