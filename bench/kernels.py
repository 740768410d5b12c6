"""The memory-bound transformer kernels of kdsl_kernels against the device's copy bandwidth and torch.

    python3 bench/kernels.py [--quick] [--json PATH] [--no-plot]

Each kernel runs at a prefill size (a few MB to a few tens of MB moved,
where bandwidth decides) and at a decode size (one token, where the launch
decides). GB/s counts the bytes a kernel must move: every tensor read once
and written once. The yardstick is a plain OpenCL float4 copy (read + write)
on the same device; torch (CPU here, CUDA on a GPU machine) runs the same
operation on the same data in the same run. Times are per call with calls
queued back to back and one host sync per batch, as a model's layers run.
"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's kdsl and bench

import numpy as np

import kdsl
import kdsl_kernels as kk
from bench import common
from bench.attention import batch_time
from kdsl_kernels.rope import inv_freq

F32 = 4


def cases(quick):
    """(name, size label, setup) with setup(rng) -> (kdsl call, torch call or None, bytes moved)."""
    M, N, I, V = (64, 1024, 2816, 8000) if quick else (512, 4096, 11008, 32000)
    H, S, D = (8, 64, 64) if quick else (32, 512, 128)
    out = []
    for rows, label in ((M, "prefill"), (1, "decode")):
        out += [
            ("add", label, lambda rng, m=rows: _add(rng, m, N)),
            ("rms_norm", label, lambda rng, m=rows: _rms_norm(rng, m, N)),
            ("add_rms_norm", label, lambda rng, m=rows: _add_rms_norm(rng, m, N)),
            ("swiglu", label, lambda rng, m=rows: _swiglu(rng, m, I)),
            ("embedding", label, lambda rng, m=rows: _embedding(rng, m, V, N)),
            ("rope (into cache)", label, lambda rng, s=1 if rows == 1 else S: _rope(rng, H, s, D)),
            ("copy (into cache)", label, lambda rng, s=1 if rows == 1 else S: _copy(rng, H, s, D)),
        ]
    out.append(("softmax", "prefill", lambda rng: _softmax(rng, H * S, S)))
    return out


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _add(rng, m, n):
    a, b = rng.standard_normal((2, m, n), dtype=np.float32)
    ta, tb, out = kdsl.tensor(a), kdsl.tensor(b), kdsl.empty((m, n))
    torch = _torch()
    peer = None
    if torch:
        xa, xb, xo = torch.from_numpy(a), torch.from_numpy(b), torch.empty(m, n)
        peer = lambda: torch.add(xa, xb, out=xo)                      # noqa: E731
    return lambda: kk.add(ta, tb, out=out), peer, 3 * m * n * F32


def _rms_norm(rng, m, n):
    x, w = rng.standard_normal((m, n), dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    tx, tw, out = kdsl.tensor(x), kdsl.tensor(w), kdsl.empty((m, n))
    torch = _torch()
    peer = None
    if torch:
        xx, xw = torch.from_numpy(x), torch.from_numpy(w)
        peer = lambda: torch.nn.functional.rms_norm(xx, (n,), xw, 1e-6)   # noqa: E731
    return lambda: kk.rms_norm(tx, tw, 1e-6, out=out), peer, 2 * m * n * F32


def _add_rms_norm(rng, m, n):
    x, r = rng.standard_normal((2, m, n), dtype=np.float32)
    w = rng.standard_normal(n, dtype=np.float32)
    tx, tr, tw, out = kdsl.tensor(x), kdsl.tensor(r), kdsl.tensor(w), kdsl.empty((m, n))
    torch = _torch()
    peer = None
    if torch:
        xx, xr, xw = torch.from_numpy(x), torch.from_numpy(r.copy()), torch.from_numpy(w)

        def peer():
            xr.add_(xx)
            return torch.nn.functional.rms_norm(xr, (n,), xw, 1e-6)
    return lambda: kk.add_rms_norm(tx, tr, tw, 1e-6, out=out), peer, 4 * m * n * F32


def _swiglu(rng, m, i):
    g, u = rng.standard_normal((2, m, i), dtype=np.float32)
    tg, tu, out = kdsl.tensor(g), kdsl.tensor(u), kdsl.empty((m, i))
    torch = _torch()
    peer = None
    if torch:
        xg, xu = torch.from_numpy(g), torch.from_numpy(u)
        peer = lambda: torch.nn.functional.silu(xg) * xu                # noqa: E731
    return lambda: kk.swiglu(tg, tu, out=out), peer, 3 * m * i * F32


def _embedding(rng, s, vocab, d):
    table = rng.standard_normal((vocab, d), dtype=np.float32)
    ids = rng.integers(0, vocab, s).astype(np.int32)
    tt, ti, out = kdsl.tensor(table), kdsl.tensor(ids), kdsl.empty((s, d))
    torch = _torch()
    peer = None
    if torch:
        xt, xi = torch.from_numpy(table), torch.from_numpy(ids.astype(np.int64))
        peer = lambda: torch.nn.functional.embedding(xi, xt)              # noqa: E731
    return lambda: kk.embedding(ti, tt, out=out), peer, 2 * s * d * F32


def _rope(rng, h, s, d):
    """K of shape [S, H*D] from a projection, rotated into the slot of a [H, 4096, D] cache."""
    k = rng.standard_normal((s, h * d), dtype=np.float32)
    view = kdsl.tensor(k).reshape(s, h, d).permute(1, 0, 2)
    cache = kdsl.zeros((h, 4096, d))
    slot = cache[:, 100:100 + s]
    torch = _torch()
    peer = None
    if torch:
        xk = torch.from_numpy(k).view(s, h, d).transpose(0, 1)
        angle = torch.arange(100, 100 + s, dtype=torch.float32)[:, None] * torch.from_numpy(
            inv_freq(1e4, d))[None, :]
        cos, sin = torch.cat((angle, angle), -1).cos(), torch.cat((angle, angle), -1).sin()
        xcache = torch.zeros(h, 4096, d)

        def peer():
            rotated = torch.cat((-xk[..., d // 2:], xk[..., :d // 2]), -1)
            xcache[:, 100:100 + s] = xk * cos + rotated * sin
    return lambda: kk.rope(view, 100, 1e4, out=slot), peer, 2 * h * s * d * F32


def _copy(rng, h, s, d):
    v = rng.standard_normal((s, h * d), dtype=np.float32)
    view = kdsl.tensor(v).reshape(s, h, d).permute(1, 0, 2)
    cache = kdsl.zeros((h, 4096, d))
    slot = cache[:, 100:100 + s]
    torch = _torch()
    peer = None
    if torch:
        xv = torch.from_numpy(v).view(s, h, d).transpose(0, 1)
        xcache = torch.zeros(h, 4096, d)
        peer = lambda: xcache[:, 100:100 + s].copy_(xv)                  # noqa: E731
    return lambda: kk.copy(view, slot), peer, 2 * h * s * d * F32


def _softmax(rng, rows, n):
    x = rng.standard_normal((rows, n), dtype=np.float32)
    tx, out = kdsl.tensor(x), kdsl.empty((rows, n))
    torch = _torch()
    peer = None
    if torch:
        xx = torch.from_numpy(x)
        peer = lambda: torch.softmax(xx, -1)                              # noqa: E731
    return lambda: kk.softmax(tx, out=out), peer, 2 * rows * n * F32


def host_time(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv)
    device = kdsl.current_device()
    print(f"device: {device!r}")
    common.warn_if_busy()
    copy_gbps = common.copy_bandwidth(device, n_floats=(1 << 22) if args.quick else (1 << 26))
    print(f"device float4 copy bandwidth (read + write): {copy_gbps:.2f} GB/s")
    rng = np.random.default_rng(0)
    rows = []
    for name, label, setup in cases(args.quick):
        run, peer, nbytes = setup(rng)
        reps = 5 if label == "prefill" else 50
        seconds = batch_time(run, reps)
        row = {"kernel": name, "size": label, "bytes": nbytes, "kdsl_ms": seconds * 1e3,
               "kdsl_gbps": common.gbps(nbytes, seconds),
               "of_copy": common.gbps(nbytes, seconds) / copy_gbps,
               "torch_ms": float("nan"), "vs_torch": float("nan")}
        if peer is not None:
            peer_s = host_time(peer, reps)
            row.update(torch_ms=peer_s * 1e3, vs_torch=peer_s / seconds)
        rows.append(row)
        print(f"  {name} ({label}): {row['kdsl_ms']:.3f} ms", flush=True)
    print("\nmemory-bound kernels; of copy bw = kdsl GB/s / float4 copy GB/s; "
          "vs torch > 1 means kdsl is faster")
    common.print_table(rows, [
        ("kernel", "kernel", "{}"), ("size", "size", "{}"), ("bytes", "bytes", "{:,}"),
        ("kdsl_ms", "kdsl ms", "{:.3f}"), ("kdsl_gbps", "kdsl GB/s", "{:.2f}"),
        ("of_copy", "of copy bw", "{:.0%}"), ("torch_ms", "torch ms", "{:.3f}"),
        ("vs_torch", "vs torch", "{:.2f}"),
    ])
    path = common.write_results("kernels", device, rows,
                                {"copy_bandwidth_gbps": copy_gbps, "quick": args.quick},
                                args.json)
    print(f"\nwrote {path}")
    if not args.no_plot:
        prefill = [r for r in rows if r["size"] == "prefill"]
        xs = [2 ** i for i in range(len(prefill))]
        plotted = common.plot_results(
            path.with_suffix(".png"),
            "kernels on " + device.name + ": " + ", ".join(r["kernel"] for r in prefill),
            {"kdsl": (xs, [r["kdsl_gbps"] for r in prefill])}, "kernel (in the title's order)",
            "GB/s (read + written)", (copy_gbps, "float4 copy"))
        if plotted:
            print(f"wrote {plotted}")


if __name__ == "__main__":
    main()
