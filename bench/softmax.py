"""Fused row softmax in kdsl against numpy and the device's copy roofline.

    python3 bench/softmax.py            # rows of 1024, 4096 and 3000 floats, about a minute on PoCL
    python3 bench/softmax.py --quick    # a smoke run of a few seconds

One program (work-group) normalises one row: it loads the row once, takes
its maximum and the sum of exponentials with two work-group reductions, and
stores the result, so memory is touched once each way (8 bytes per element).
BLOCK is the row length rounded up to a power of two, and the lanes past the
row's end are masked. For each shape a few num_threads values are timed and
checked against numpy; the table shows the best, beside a numpy softmax
(max, subtract, exp, sum, divide, in place where numpy allows) timed in the
same run.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's kdsl and bench

import numpy as np

import kdsl
import kdsl.language as kl
from bench import common


@kdsl.jit
def softmax_kernel(out_ptr, in_ptr, in_stride, out_stride, n_cols, BLOCK: kl.constexpr):
    row = kl.program_id(0)
    offs = kl.arange(0, BLOCK)
    mask = offs < n_cols
    x = kl.load(in_ptr + row * in_stride + offs, mask=mask, other=-float("inf"))
    x = x - kl.max(x, axis=0)
    num = kl.exp(x)
    den = kl.sum(num, axis=0)
    kl.store(out_ptr + row * out_stride + offs, num / den, mask=mask)


# (n_cols, n_rows): 1024 and 4096 fill their block, 3000 leaves 27% of a 4096 block masked.
SHAPES = [(n_cols, n_rows) for n_cols in (1024, 4096, 3000) for n_rows in (256, 4096, 16384)]
QUICK_SHAPES = [(1024, 256), (3000, 64)]
THREADS = [64, 256, 1024]
QUICK_THREADS = [64, 256]
BYTES_PER_ELEMENT = 8


def numpy_softmax(x, out):
    """Row softmax of x into out, as a numpy user would write it fast."""
    np.subtract(x, x.max(axis=1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


def measure_shape(n_cols, n_rows, threads, device, copy_gbps, rng):
    """Rows for one shape: every num_threads timed on the device, numpy timed once."""
    x_host = rng.standard_normal((n_rows, n_cols), dtype=np.float32)
    numpy_out = np.empty_like(x_host)
    numpy_s = common.time_numpy(lambda: numpy_softmax(x_host, numpy_out))
    x, out = kdsl.tensor(x_host), kdsl.empty((n_rows, n_cols))
    block = common.next_power_of_two(n_cols)
    nbytes = BYTES_PER_ELEMENT * n_rows * n_cols
    rows = []
    for num_threads in threads:
        if num_threads > min(block, device.max_work_group_size):
            continue
        out.copy_from(np.zeros((n_rows, n_cols), np.float32))
        timing = common.time_launch(lambda: softmax_kernel[(n_rows,)](
            out, x, x.stride(0), out.stride(0), n_cols, BLOCK=block, num_threads=num_threads))
        if not np.allclose(out.numpy(), numpy_out, rtol=1e-5, atol=1e-7):
            raise AssertionError(f"softmax_kernel num_threads={num_threads} shape "
                                 f"({n_rows}, {n_cols}) disagrees with numpy")
        rows.append({
            "n_rows": n_rows, "n_cols": n_cols, "bytes": nbytes, "BLOCK": block,
            "num_threads": num_threads,
            **common.speed_fields(nbytes, timing, numpy_s),
        })
    return common.rank_rows(rows, copy_gbps)


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv)
    device = kdsl.current_device()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    threads = QUICK_THREADS if args.quick else THREADS
    copy_gbps = common.device_header(device, args.quick)
    rng = np.random.default_rng(0)
    rows = []
    for n_cols, n_rows in shapes:
        rows += measure_shape(n_cols, n_rows, threads, device, copy_gbps, rng)

    best = [r for r in rows if r["best"]]
    print("\nfused softmax, one row per program, best num_threads per shape; "
          "speed vs numpy > 1 means kdsl is faster")
    common.print_table(best, [
        ("n_rows", "rows", "{}"), ("n_cols", "cols", "{}"), ("BLOCK", "BLOCK", "{}"),
        ("num_threads", "threads", "{}"),
        ("kdsl_ms", "kdsl ms", "{:.3f}"), ("kdsl_gbps", "kdsl GB/s", "{:.2f}"),
        ("wall_ms", "wall ms", "{:.3f}"),
        ("numpy_ms", "numpy ms", "{:.3f}"), ("numpy_gbps", "numpy GB/s", "{:.2f}"),
        ("vs_numpy", "speed vs numpy", "{:.2f}"), ("of_copy", "of copy bw", "{:.0%}"),
    ])
    print("\nsweep: kdsl GB/s per num_threads")
    sweep = []
    for n_cols, n_rows in shapes:
        line = {"shape": f"{n_rows}x{n_cols}"}
        line.update({str(r["num_threads"]): r["kdsl_gbps"] for r in rows
                     if (r["n_cols"], r["n_rows"]) == (n_cols, n_rows)})
        sweep.append(line)
    shown = [str(t) for t in threads if t <= device.max_work_group_size]
    common.print_table([{k: line.get(k, float("nan")) for k in ["shape"] + shown}
                        for line in sweep],
                       [("shape", "rows x cols", "{}")] + [(t, t, "{:.2f}") for t in shown])

    path = common.write_results("softmax", device, rows,
                                {"copy_bandwidth_gbps": copy_gbps, "quick": args.quick},
                                args.json)
    print(f"\nwrote {path}")
    if not args.no_plot:
        series = {}
        for n_cols in dict.fromkeys(c for c, _ in shapes):
            mine = [r for r in best if r["n_cols"] == n_cols]
            xs = [r["n_rows"] for r in mine]
            series[f"kdsl, {n_cols} cols"] = (xs, [r["kdsl_gbps"] for r in mine])
            series[f"numpy, {n_cols} cols"] = (xs, [r["numpy_gbps"] for r in mine])
        plotted = common.plot_results(path.with_suffix(".png"), f"softmax on {device.name}",
                                      series, "rows", "GB/s (read + written)",
                                      (copy_gbps, "float4 copy"))
        if plotted:
            print(f"wrote {plotted}")


if __name__ == "__main__":
    main()
