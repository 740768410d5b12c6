"""The memory-bound transformer kernels of kdsl_kernels against the device's copy bandwidth and torch.

    python3 bench/kernels.py [--quick] [--rounds N] [--json PATH] [--no-plot]

Each kernel runs at a prefill size (a few MB to a few tens of MB moved,
where bandwidth decides) and at a decode size (one token, where the launch
decides). GB/s counts the bytes a kernel must move: every tensor read once
and written once. The yardstick is a plain OpenCL float4 copy (read + write)
on the same device.

Columns:
  kdsl ms    device time per call: the kdsl wrapper call runs under
             kdsl.capture_launches(), and the start-to-end profiling times of
             every kernel it launched are summed; median over the calls.
             kdsl GB/s and 'of copy bw' come from this time.
  wall ms    host wall time per call with the calls queued back to back and
             one queue.finish() per batch (median of 3 batches), as a model's
             layers run: the Python launch path is included, so on a fast GPU
             a small kernel shows its launch cost here, not its speed.
  torch ms   torch doing the same operation on the same data, per call. On
             CUDA where torch sees a GPU (inputs on 'cuda'): calls back to
             back with torch.cuda.synchronize() around each batch, median of
             3 batches. On the CPU otherwise: median of single calls. Its
             device is in the header and in each JSON row ("torch_device").
  vs torch   torch ms / kdsl ms (device time); vs torch (wall) is
             torch ms / wall ms. > 1 means kdsl is faster.

Each case is measured for --rounds rounds (3 by default), the copy
bandwidth measured again right after the kernel in every round: kdsl keeps
its best round and 'of copy bw' divides by the best copy of that case's
rounds. On a shared machine whose speed moves between bursts (this
project's 2-core VM halves at times) a ratio of two figures taken minutes
apart measured the noise; all rounds are in the JSON.
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


def torch_device():
    """'cuda' where torch sees a CUDA GPU, 'cpu' where it does not, None without torch."""
    torch = _torch()
    if torch is None:
        return None
    return "cuda" if torch.cuda.is_available() else "cpu"


def _t(array):
    """A numpy array as a torch tensor on torch_device()."""
    return _torch().from_numpy(array).to(torch_device())


def _add(rng, m, n):
    a, b = rng.standard_normal((2, m, n), dtype=np.float32)
    ta, tb, out = kdsl.tensor(a), kdsl.tensor(b), kdsl.empty((m, n))
    torch = _torch()
    peer = None
    if torch:
        xa, xb, xo = _t(a), _t(b), torch.empty(m, n, device=torch_device())
        peer = lambda: torch.add(xa, xb, out=xo)                      # noqa: E731
    return lambda: kk.add(ta, tb, out=out), peer, 3 * m * n * F32


def _rms_norm(rng, m, n):
    x, w = rng.standard_normal((m, n), dtype=np.float32), rng.standard_normal(n, dtype=np.float32)
    tx, tw, out = kdsl.tensor(x), kdsl.tensor(w), kdsl.empty((m, n))
    torch = _torch()
    peer = None
    if torch:
        xx, xw = _t(x), _t(w)
        peer = lambda: torch.nn.functional.rms_norm(xx, (n,), xw, 1e-6)   # noqa: E731
    return lambda: kk.rms_norm(tx, tw, 1e-6, out=out), peer, 2 * m * n * F32


def _add_rms_norm(rng, m, n):
    x, r = rng.standard_normal((2, m, n), dtype=np.float32)
    w = rng.standard_normal(n, dtype=np.float32)
    tx, tr, tw, out = kdsl.tensor(x), kdsl.tensor(r), kdsl.tensor(w), kdsl.empty((m, n))
    torch = _torch()
    peer = None
    if torch:
        xx, xr, xw = _t(x), _t(r.copy()), _t(w)

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
        xg, xu = _t(g), _t(u)
        peer = lambda: torch.nn.functional.silu(xg) * xu                # noqa: E731
    return lambda: kk.swiglu(tg, tu, out=out), peer, 3 * m * i * F32


def _embedding(rng, s, vocab, d):
    table = rng.standard_normal((vocab, d), dtype=np.float32)
    ids = rng.integers(0, vocab, s).astype(np.int32)
    tt, ti, out = kdsl.tensor(table), kdsl.tensor(ids), kdsl.empty((s, d))
    torch = _torch()
    peer = None
    if torch:
        xt, xi = _t(table), _t(ids.astype(np.int64))
        peer = lambda: torch.nn.functional.embedding(xi, xt)              # noqa: E731
    return lambda: kk.embedding(ti, tt, out=out), peer, 2 * s * d * F32


def _into_cache(rng, h, s, d):
    """A projection's [S, H*D] output seen as [H, S, D], and the slot at position 100
    of a [H, 4096, D] cache; with torch, its copies of both (else None, None)."""
    x = rng.standard_normal((s, h * d), dtype=np.float32)
    view = kdsl.tensor(x).reshape(s, h, d).permute(1, 0, 2)
    slot = kdsl.zeros((h, 4096, d))[:, 100:100 + s]
    torch = _torch()
    if not torch:
        return view, slot, None, None
    return (view, slot, _t(x).view(s, h, d).transpose(0, 1),
            torch.zeros(h, 4096, d, device=torch_device()))


def _rope(rng, h, s, d):
    """K of shape [S, H*D] from a projection, rotated into the slot of a [H, 4096, D] cache."""
    view, slot, xk, xcache = _into_cache(rng, h, s, d)
    peer = None
    if xk is not None:
        torch = _torch()
        angle = (torch.arange(100, 100 + s, dtype=torch.float32, device=torch_device())[:, None]
                 * _t(inv_freq(1e4, d))[None, :])
        cos, sin = torch.cat((angle, angle), -1).cos(), torch.cat((angle, angle), -1).sin()

        def peer():
            rotated = torch.cat((-xk[..., d // 2:], xk[..., :d // 2]), -1)
            xcache[:, 100:100 + s] = xk * cos + rotated * sin
    return lambda: kk.rope(view, 100, 1e4, out=slot), peer, 2 * h * s * d * F32


def _copy(rng, h, s, d):
    view, slot, xv, xcache = _into_cache(rng, h, s, d)
    peer = None
    if xv is not None:
        peer = lambda: xcache[:, 100:100 + s].copy_(xv)                  # noqa: E731
    return lambda: kk.copy(view, slot), peer, 2 * h * s * d * F32


def _softmax(rng, rows, n):
    x = rng.standard_normal((rows, n), dtype=np.float32)
    tx, out = kdsl.tensor(x), kdsl.empty((rows, n))
    torch = _torch()
    peer = None
    if torch:
        xx = _t(x)
        peer = lambda: torch.softmax(xx, -1)                              # noqa: E731
    return lambda: kk.softmax(tx, out=out), peer, 2 * rows * n * F32


def torch_time(fn, reps, batches=3):
    """Seconds per call of `fn` (a torch call), after one warm-up call.

    On CUDA: `reps` calls back to back with torch.cuda.synchronize() around
    the batch, median of `batches` batches; the launches are asynchronous, so
    this is the GPU's time unless torch's host launch path is the slower one.
    On the CPU: the median of `reps * batches` single calls (a call returns
    when it is done); a median of single calls shrugs off the stalls that
    torch's worker threads suffer when they share the cores with a CPU OpenCL
    device's threads, which a batch mean would absorb.
    """
    torch = _torch()
    fn()
    if torch_device() != "cuda":
        times = []
        for _ in range(reps * batches):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(batches):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / reps)
    return statistics.median(times)


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv, rounds=3)
    device = kdsl.current_device()
    copy_gbps = common.device_header(device, args.quick)
    copy_floats = (1 << 22) if args.quick else (1 << 26)
    peer_device = torch_device()
    print(f"torch peer: {peer_device or 'none (torch is not installed)'}")
    rng = np.random.default_rng(0)
    rows = []
    for name, label, setup in cases(args.quick):
        run, peer, nbytes = setup(rng)
        reps = 5 if label == "prefill" else 50
        rounds = common.rounds_beside_copy(run, device, args.rounds, reps, copy_floats)
        seconds, wall = min(rounds["kdsl_s"]), min(rounds["wall_s"])
        case_copy = max(rounds["copy_gbps"])
        row = {"kernel": name, "size": label, "bytes": nbytes, "kdsl_ms": seconds * 1e3,
               "kdsl_gbps": common.gbps(nbytes, seconds),
               "of_copy": common.gbps(nbytes, seconds) / case_copy, "copy_gbps": case_copy,
               "rounds": rounds,
               "wall_ms": wall * 1e3, "reps": 3 * reps,
               "torch_device": peer_device, "torch_ms": float("nan"),
               "vs_torch": float("nan"), "vs_torch_wall": float("nan")}
        if peer is not None:
            common.settle()
            peer_s = torch_time(peer, reps)
            row.update(torch_ms=peer_s * 1e3, vs_torch=peer_s / seconds, vs_torch_wall=peer_s / wall)
        rows.append(row)
        print(f"  {name} ({label}): {row['kdsl_ms']:.3f} ms device, {row['wall_ms']:.3f} ms wall",
              flush=True)
    peer_name = f"torch ({peer_device})" if peer_device else "torch"
    print(f"\nmemory-bound kernels. kdsl ms: device time per call (summed profiling events of its "
          f"launches, median); kdsl GB/s and of copy bw (= kdsl GB/s / float4 copy GB/s) from it. "
          f"wall ms: host time per call, calls back to back, launch cost included. "
          f"{peer_name} ms: per call ("
          f"{'back to back, synchronize per batch' if peer_device == 'cuda' else 'median of single calls'}). vs torch = torch ms / kdsl ms, "
          f"vs torch (wall) = torch ms / wall ms; > 1 means kdsl is faster")
    common.print_table(rows, [
        ("kernel", "kernel", "{}"), ("size", "size", "{}"), ("bytes", "bytes", "{:,}"),
        ("kdsl_ms", "kdsl ms", "{:.4f}"), ("kdsl_gbps", "kdsl GB/s", "{:.2f}"),
        ("of_copy", "of copy bw", "{:.0%}"), ("wall_ms", "wall ms", "{:.4f}"),
        ("torch_ms", f"{peer_name} ms", "{:.4f}"), ("vs_torch", "vs torch", "{:.2f}"),
        ("vs_torch_wall", "vs torch (wall)", "{:.2f}"),
    ])
    path = common.write_results("kernels", device, rows,
                                {"copy_bandwidth_gbps": copy_gbps, "quick": args.quick,
                                 "torch_device": peer_device,
                                 "kdsl_ms": "device time per call (profiling events)",
                                 "wall_ms": "host wall time per call, back to back"},
                                args.json)
    print(f"\nwrote {path}")
    if not args.no_plot:
        prefill = [r for r in rows if r["size"] == "prefill"]
        xs = [2 ** i for i in range(len(prefill))]
        plotted = common.plot_results(
            path.with_suffix(".png"),
            "kernels on " + device.name + ": " + ", ".join(r["kernel"] for r in prefill),
            {"kdsl (device time)": (xs, [r["kdsl_gbps"] for r in prefill]),
             "kdsl (wall time)": (xs, [common.gbps(r["bytes"], r["wall_ms"] * 1e-3)
                                       for r in prefill])},
            "kernel (in the title's order)",
            "GB/s (read + written)", (copy_gbps, "float4 copy"))
        if plotted:
            print(f"wrote {plotted}")


if __name__ == "__main__":
    main()
