"""Shared helpers for the benchmarks: timing, the copy roofline, tables, results.

    >>> from bench import common
    >>> timing = common.time_launch(lambda: add_kernel[grid](x, y, out, n, BLOCK=1024))
    >>> timing.device_s, timing.wall_s          # medians, in seconds
    >>> common.copy_bandwidth(kdsl.current_device())      # GB/s of a raw float4 copy

Device times come from OpenCL profiling events (the kdsl queue has profiling
on); wall-clock times include the Python launch path and waiting for the
kernel to finish. The reference roofline is a plain OpenCL float4 copy kernel,
written here in OpenCL C and built with pyopencl, not with kdsl, so a
regression in kdsl cannot move the yardstick.
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyopencl as cl

RESULTS_DIR = Path(__file__).resolve().parent / "results"

_COPY_SOURCE = """
__kernel void copy_float4(__global const float4* restrict src, __global float4* restrict dst)
{
    const size_t i = get_global_id(0);
    dst[i] = src[i];
}
"""


@dataclass
class Timing:
    """Medians of one launch's device time and wall-clock time, in seconds."""

    device_s: float
    wall_s: float
    min_device_s: float
    reps: int


def time_launch(launch, warmup=1, min_reps=5, max_reps=50, budget_s=0.5):
    """Time `launch`, a callable that enqueues one kernel and returns its event.

    After `warmup` launches (the first one compiles), the launch is repeated
    until about `budget_s` of device time is spent, between `min_reps` and
    `max_reps` times. Each repetition waits for its kernel, so the wall-clock
    time is launch overhead plus kernel time.

    >>> t = time_launch(lambda: copy_kernel[(64,)](src, dst, BLOCK=256))
    >>> t.device_s < t.wall_s
    True
    """
    for _ in range(warmup):
        launch().wait()
    device, wall = [], []
    while len(device) < max_reps and (len(device) < min_reps or sum(device) < budget_s):
        start = time.perf_counter()
        event = launch()
        event.wait()
        wall.append(time.perf_counter() - start)
        device.append((event.profile.end - event.profile.start) * 1e-9)
    return Timing(statistics.median(device), statistics.median(wall), min(device), len(device))


def batch_time(fn, reps, batches=3):
    """Wall seconds per call of `fn` (a kdsl call) with `reps` calls queued back
    to back and one queue.finish() per batch, median over `batches` batches,
    after one warm-up call (which compiles): the launch cost included, as a
    model's layers pay it.
    """
    import kdsl
    queue = kdsl.current_device().queue
    fn()
    queue.finish()
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        queue.finish()
        times.append((time.perf_counter() - start) / reps)
    return statistics.median(times)


def device_header(device, quick, n_floats=1 << 26):
    """Print the device, warn if the host is busy, and measure and print the float4
    copy bandwidth (a smaller copy with --quick); returns it in GB/s."""
    print(f"device: {device!r}")
    warn_if_busy()
    copy_gbps = copy_bandwidth(device, n_floats=(1 << 22) if quick else n_floats)
    print(f"device float4 copy bandwidth (read + write): {copy_gbps:.2f} GB/s")
    return copy_gbps


def settle(seconds=0.3):
    """Wait for other runtimes' worker threads to stop spinning before the next timing.

    OpenBLAS (numpy), OpenMP (torch on a CPU) and llama.cpp keep their threads
    busy-waiting for a while after a call returns, on the cores the next
    measurement needs: on this 2-core VM a 512^3 kdsl matmul timed right
    after numpy's ran at 85-118 GFLOP/s, 0.1 s later at 139-151, 0.3 s later
    at 139-163 (.scratch: matmul right after numpy, delays alternated). Every
    peer is timed after this pause, kdsl included, so none inherits another's
    spinning threads.
    """
    time.sleep(seconds)


def rounds_beside_copy(fn, device, rounds, reps, copy_floats, flush_cache=False):
    """Time `fn` (a kdsl call) for `rounds` rounds, the float4 copy measured
    right after it in each: {"kdsl_s": [...], "wall_s": [...], "copy_gbps": [...]}.

    Per round: settle(); device seconds per call (kdsl.autotuner.time_call:
    the summed profiling times of the kernels a call launched, median of
    3 * reps calls; `flush_cache`: each call after a buffer larger than the
    caches is overwritten, so its operands come from memory); wall seconds
    per call (batch_time, launch cost included); the copy bandwidth of
    `copy_floats` floats. On a shared machine whose speed moves between
    bursts (this project's 2-core VM halves at times) a kernel's ratio to a
    copy measured minutes before it measured the noise; a caller keeps each
    figure's best round and divides by the best copy of the same rounds.
    """
    from kdsl.autotuner import time_call
    out = {"kdsl_s": [], "wall_s": [], "copy_gbps": []}
    for _ in range(rounds):
        settle()
        out["kdsl_s"].append(time_call(fn, warmup=1, rep=3 * reps, device=device,
                                       flush_cache=flush_cache))
        out["wall_s"].append(batch_time(fn, reps))
        out["copy_gbps"].append(copy_bandwidth(device, n_floats=copy_floats))
    return out


def time_numpy(fn, warmup=1, min_reps=3, max_reps=30, budget_s=0.5):
    """The median wall-clock seconds of calling `fn()` (a numpy computation).

    >>> time_numpy(lambda: np.add(a, b, out=c))
    0.0291
    """
    for _ in range(warmup):
        fn()
    times = []
    while len(times) < max_reps and (len(times) < min_reps or sum(times) < budget_s):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gbps(nbytes, seconds):
    """Throughput in GB/s (10**9 bytes per second)."""
    return nbytes / seconds / 1e9


def speed_fields(nbytes, timing, numpy_s):
    """The timing columns every row of a kdsl-vs-numpy table has."""
    return {"kdsl_ms": timing.device_s * 1e3, "kdsl_gbps": gbps(nbytes, timing.device_s),
            "wall_ms": timing.wall_s * 1e3, "reps": timing.reps,
            "numpy_ms": numpy_s * 1e3, "numpy_gbps": gbps(nbytes, numpy_s)}


def rank_rows(rows, copy_gbps):
    """Mark the fastest row and add each row's ratios to numpy and to the copy bandwidth."""
    best = min(rows, key=lambda r: r["kdsl_ms"])
    for row in rows:
        row["best"] = row is best
        row["vs_numpy"] = row["numpy_ms"] / row["kdsl_ms"]
        row["of_copy"] = row["kdsl_gbps"] / copy_gbps
    return rows


def copy_bandwidth(device, n_floats=1 << 26, reps=10):
    """GB/s of the device's best plain float4 copy of `n_floats` floats.

    Counts the bytes read plus the bytes written. A few work-group sizes are
    tried (and the driver's own choice); the fastest median is returned, so
    this is what a simple kernel can get, not a tuned memcpy.

    >>> copy_bandwidth(kdsl.current_device())
    14.1
    """
    n_floats = min(n_floats, device.max_mem_alloc_size // 4) // 4 * 4
    program = cl.Program(device.context, _COPY_SOURCE).build()
    kernel = cl.Kernel(program, "copy_float4")
    flags = cl.mem_flags.READ_WRITE
    src = cl.Buffer(device.context, flags, n_floats * 4)
    dst = cl.Buffer(device.context, flags, n_floats * 4)
    cl.enqueue_fill_buffer(device.queue, src, np.float32(1.0), 0, n_floats * 4)
    cl.enqueue_fill_buffer(device.queue, dst, np.float32(0.0), 0, n_floats * 4)
    kernel.set_args(src, dst)
    global_size = (n_floats // 4,)
    best = 0.0
    for local in (None, 64, 256, 1024):
        if local is not None and (local > device.max_work_group_size
                                  or global_size[0] % local):
            continue
        local_size = None if local is None else (local,)

        def launch():
            return cl.enqueue_nd_range_kernel(device.queue, kernel, global_size, local_size)

        timing = time_launch(launch, warmup=1, min_reps=reps, max_reps=reps)
        best = max(best, gbps(2 * n_floats * 4, timing.device_s))
    src.release()
    dst.release()
    return best


def device_slug(device):
    """The device's name as a file-name part: 'pthread-haswell-amd-epyc'."""
    return re.sub(r"[^a-z0-9]+", "-", device.name.lower()).strip("-") or "device"


def device_info(device):
    """What a result file records about the device it was measured on."""
    return {
        "name": device.name,
        "platform": device.platform_name,
        "driver": device.driver_version,
        "kind": "GPU" if device.is_gpu else "CPU" if device.is_cpu else "other",
        "compute_units": device.compute_units,
        "max_work_group_size": device.max_work_group_size,
        "global_mem_bytes": device.global_mem_size,
        "local_mem_bytes": device.local_mem_size,
        "fingerprint": device.fingerprint,
        "host": platform.node(),
        "host_cpu": platform.processor() or platform.machine(),
        "numpy": np.__version__,
    }


def warn_if_busy(threshold=0.5):
    """Print a warning when other processes load the host: the numbers will be noisy.

    On a CPU device (PoCL) the kernels share the cores with everything else,
    so a benchmark run next to a test suite measures both.
    """
    load = os.getloadavg()[0]
    if load > threshold:
        print(f"warning: the host's 1-minute load average is {load:.2f}; other processes "
              "compete for the CPU and the timings will be lower and noisier")


def parse_args(description, argv=None, rounds=None, extra=()):
    """The flags every benchmark takes: --quick, --json PATH, --no-plot; and
    --rounds N (default `rounds`) where a benchmark alternates its measurements;
    `extra`: (flags, argparse keywords) pairs of a benchmark's own options."""
    parser = argparse.ArgumentParser(description=description)
    for flags, kwargs in extra:
        parser.add_argument(*flags, **kwargs)
    if rounds is not None:
        parser.add_argument("--rounds", type=int, default=rounds,
                            help="measure kdsl and its yardsticks in turn this many times, "
                                 "each keeping its best round (default %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke run: small sizes, few configs, few repetitions")
    parser.add_argument("--json", metavar="PATH", type=Path,
                        help="where to write the JSON result (default: "
                             "bench/results/<name>_<device>.json)")
    parser.add_argument("--no-plot", action="store_true",
                        help="do not draw the plot next to the JSON result")
    args = parser.parse_args(argv)
    if rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    return args


def print_table(rows, columns, file=None):
    """Print `rows` (dicts) as an aligned table.

    `columns` is a list of (key, header, format), format a str.format spec
    such as "{:.2f}".

    >>> print_table([{"n": 1024, "gbps": 3.5}], [("n", "n", "{}"), ("gbps", "GB/s", "{:.1f}")])
       n  GB/s
    1024   3.5
    """
    cells = [[fmt.format(row[key]) for key, _, fmt in columns] for row in rows]
    headers = [header for _, header, _ in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
    out = file or sys.stdout
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths)), file=out)
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths)), file=out)
    out.flush()


def write_results(name, device, rows, extra=None, path=None):
    """Write a benchmark's rows as JSON; returns the path written.

    The default path is bench/results/<name>_<device-slug>.json. The file
    records the device, the time of the run, the command line and `extra`.
    """
    path = Path(path) if path else RESULTS_DIR / f"{name}_{device_slug(device)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": name,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python3"] + sys.argv),
        "load_average_at_end": os.getloadavg()[0],
        "device": device_info(device),
        **(extra or {}),
        "rows": rows,
    }
    path.write_text(json.dumps(record, indent=1, default=_plain) + "\n")
    return path


def _plain(value):
    """numpy scalars as Python numbers, for json.dumps."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def plot_results(path, title, series, xlabel, ylabel, roofline=None):
    """Draw `series` ({label: (xs, ys)}) on log-x axes into `path` (a PNG).

    `roofline` is (value, label) for a horizontal line. matplotlib is an
    optional dependency of the benchmarks only: without it nothing is drawn,
    a note says so, and None is returned; otherwise the path is.
    """
    try:
        import matplotlib
    except ImportError:
        print(f"note: matplotlib is not installed, so no plot was drawn "
              f"(pip install matplotlib to get {Path(path).name})")
        return None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    for label, (xs, ys) in series.items():
        axes.plot(xs, ys, marker="o", linestyle="--" if "numpy" in label else "-", label=label)
    if roofline is not None:
        axes.axhline(roofline[0], color="grey", linestyle=":", label=roofline[1])
    axes.set_xscale("log", base=2)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path


def next_power_of_two(n):
    """The smallest power of two >= n: the BLOCK that covers n elements.

    >>> next_power_of_two(3000)
    4096
    """
    return 1 << max(n - 1, 0).bit_length()
