"""Vector add in kdsl against numpy and the device's copy roofline.

    python3 bench/elementwise.py            # sizes 4K to 64M floats, about a minute on PoCL
    python3 bench/elementwise.py --quick    # a smoke run of a few seconds

For each size every (BLOCK, num_threads) pair of a small sweep is timed and
checked against numpy; the table shows the best pair, its device time and
GB/s (12 bytes per element: two floats read, one written), the wall-clock
time of a launch, numpy's np.add into a preallocated array, measured in the
same run, and the fraction of the device's float4 copy bandwidth. A second
table shows every pair's GB/s.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's kdsl and bench

import numpy as np

import kdsl
import kdsl.language as kl
from bench import common


@kdsl.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: kl.constexpr):
    pid = kl.program_id(0)
    offs = pid * BLOCK + kl.arange(0, BLOCK)
    mask = offs < n
    x = kl.load(x_ptr + offs, mask=mask, other=0.0)
    y = kl.load(y_ptr + offs, mask=mask, other=0.0)
    kl.store(out_ptr + offs, x + y, mask=mask)


SIZES = [1 << 12, 1 << 16, 1 << 20, 1 << 22, 1 << 24, 1 << 26]
QUICK_SIZES = [1 << 12, 1 << 16, 1 << 20]
# (BLOCK, num_threads): one, four and sixteen elements per work-item.
CONFIGS = [(256, 64), (1024, 64), (256, 256), (1024, 256), (1024, 1024), (4096, 1024)]
QUICK_CONFIGS = [(1024, 256), (1024, 1024)]
BYTES_PER_ELEMENT = 12


def fits(n, device):
    """Whether three n-float buffers fit comfortably on the device (and the host's copies)."""
    return n * 4 <= device.max_mem_alloc_size and 3 * n * 4 <= device.global_mem_size // 2


def measure_size(n, configs, device, copy_gbps, rng):
    """Rows for one size: every config timed on the device, numpy timed once."""
    x_host = rng.random(n, dtype=np.float32)
    y_host = rng.random(n, dtype=np.float32)
    expected = x_host + y_host
    x, y, out = kdsl.tensor(x_host), kdsl.tensor(y_host), kdsl.empty(n)
    nbytes = BYTES_PER_ELEMENT * n
    numpy_out = np.empty_like(x_host)
    numpy_s = common.time_numpy(lambda: np.add(x_host, y_host, out=numpy_out))
    rows = []
    for block, threads in configs:
        if threads > device.max_work_group_size:
            continue
        grid = (kdsl.cdiv(n, block),)
        out.copy_from(np.zeros(n, np.float32))
        timing = common.time_launch(
            lambda: add_kernel[grid](x, y, out, n, BLOCK=block, num_threads=threads))
        if not np.array_equal(out.numpy(), expected):
            raise AssertionError(f"add_kernel BLOCK={block} num_threads={threads} n={n} "
                                 "disagrees with numpy")
        rows.append({
            "n": n, "bytes": nbytes, "BLOCK": block, "num_threads": threads,
            **common.speed_fields(nbytes, timing, numpy_s),
        })
    return common.rank_rows(rows, copy_gbps)


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv)
    device = kdsl.current_device()
    sizes = QUICK_SIZES if args.quick else SIZES
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    copy_gbps = common.device_header(device, args.quick)
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        if not fits(n, device):
            print(f"skipping n={n}: too large for {device.name}")
            continue
        rows += measure_size(n, configs, device, copy_gbps, rng)

    best = [r for r in rows if r["best"]]
    for r in best:
        r["config"] = f"{r['BLOCK']}/{r['num_threads']}"
    print("\nvector add, best (BLOCK/num_threads) per size; speed vs numpy > 1 means kdsl is faster")
    common.print_table(best, [
        ("n", "n", "{}"), ("config", "BLOCK/thr", "{}"),
        ("kdsl_ms", "kdsl ms", "{:.3f}"), ("kdsl_gbps", "kdsl GB/s", "{:.2f}"),
        ("wall_ms", "wall ms", "{:.3f}"),
        ("numpy_ms", "numpy ms", "{:.3f}"), ("numpy_gbps", "numpy GB/s", "{:.2f}"),
        ("vs_numpy", "speed vs numpy", "{:.2f}"), ("of_copy", "of copy bw", "{:.0%}"),
    ])
    print("\nsweep: kdsl GB/s per BLOCK/num_threads")
    sweep = []
    for n in sorted({r["n"] for r in rows}):
        line = {"n": n}
        line.update({f"{r['BLOCK']}/{r['num_threads']}": r["kdsl_gbps"]
                     for r in rows if r["n"] == n})
        sweep.append(line)
    names = [f"{b}/{t}" for b, t in configs if t <= device.max_work_group_size]
    common.print_table(sweep, [("n", "n", "{}")] + [(c, c, "{:.2f}") for c in names])

    path = common.write_results("elementwise", device, rows,
                                {"copy_bandwidth_gbps": copy_gbps, "quick": args.quick},
                                args.json)
    print(f"\nwrote {path}")
    if not args.no_plot:
        xs = [r["n"] for r in best]
        plotted = common.plot_results(
            path.with_suffix(".png"), f"vector add on {device.name}",
            {"kdsl (best config)": (xs, [r["kdsl_gbps"] for r in best]),
             "numpy": (xs, [r["numpy_gbps"] for r in best])},
            "elements", "GB/s (read + written)", (copy_gbps, "float4 copy"))
        if plotted:
            print(f"wrote {plotted}")


if __name__ == "__main__":
    main()
