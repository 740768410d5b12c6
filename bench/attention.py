"""kdsl_kernels.attention beside torch's scaled_dot_product_attention, measured in the same run.

    python3 bench/attention.py [--quick] [--sweep] [--rounds N] [--json PATH] [--no-plot]

Cases: causal prefill (the anchor: 1 x 32 heads x 512 x 128 on a CPU,
x 2048 on a GPU), chunked prefill (128 new queries after 896 cached tokens,
GQA 32/8) and decode (one query against 4096 keys, GQA 32/8 and MHA 32/32).
Prefill is reported in GFLOP/s (4 * D per visible query-key pair, the two
products); decode in GB/s of K and V read, beside the device's float4 copy
bandwidth. torch runs on CUDA where a GPU is present, else on the CPU with
its default threads; its causal mask for S < T is passed explicitly (torch's
is_causal aligns queries to the first keys, kdsl to the last).

Each config is measured for --rounds rounds (3 by default), the copy
bandwidth right after it in each (common.rounds_beside_copy); each figure
keeps its best round. kdsl ms is device time (profiling events of the
attention and split-reduce kernels), from which GFLOP/s, K+V GB/s and 'of
copy bw' (against the best copy of the case's rounds) come; decode is timed
with the caches flushed before each call, so K and V come from memory as in
a model's decode step, where the layers' weights pass through the caches in
between. wall ms is host time per call, calls back to back (launch cost
included): vs torch divides torch's time by it, as both are what a caller
waits for.
"""
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's kdsl and bench

import numpy as np

import kdsl
from bench import common
from kdsl_kernels.attention import attention, attention_config

# (name, H, KVH, S, T, D, causal)
CPU_CASES = [("prefill", 32, 32, 512, 512, 128, True),
             ("chunked prefill", 32, 8, 128, 1024, 128, True),
             ("decode GQA", 32, 8, 1, 4096, 128, False),
             ("decode MHA", 32, 32, 1, 4096, 128, False)]
GPU_CASES = [("prefill", 32, 32, 2048, 2048, 128, True)] + CPU_CASES
QUICK_CASES = [("prefill", 8, 8, 128, 128, 64, True), ("decode GQA", 8, 2, 1, 1024, 64, False)]

CPU_SWEEP = [{"BM": 8, "BN": 8, "BK": 64, "num_threads": 1},
             {"BM": 8, "BN": 8, "BK": 64, "num_threads": 1, "acc_in_memory": True},
             {"BM": 4, "BN": 16, "BK": 64, "num_threads": 1, "acc_in_memory": True},
             {"BM": 32, "BN": 16, "BK": 16, "num_threads": 32},
             {"form": "rows", "BN": 8, "num_threads": 1}]
GPU_SWEEP = [{"BM": 32, "BN": 32, "BK": 16, "num_threads": 64},
             {"BM": 64, "BN": 32, "BK": 16, "num_threads": 128},
             {"BM": 32, "BN": 64, "BK": 32, "num_threads": 128},
             {"BM": 64, "BN": 64, "BK": 16, "num_threads": 256},
             {"BM": 128, "BN": 32, "BK": 16, "num_threads": 256},
             {"BM": 64, "BN": 32, "BK": 32, "num_threads": 128},
             {"BM": 128, "BN": 64, "BK": 16, "num_threads": 256}]


def visible_pairs(S, T, causal):
    """Query-key pairs the mask lets through (the work a causal kernel must do)."""
    if not causal:
        return S * T
    return sum(T - S + i + 1 for i in range(S))


def torch_sdpa(q, k, v, causal):
    """(seconds per call, device name, output) of torch SDPA on the same data, or None."""
    try:
        import torch
    except ImportError:
        return None
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    H, S, D = q.shape
    KVH, T, _ = k.shape
    tq = torch.from_numpy(q)[None].to(dev)
    # K/V heads repeated for the query heads (what enable_gqa does inside SDPA)
    tk = torch.from_numpy(np.repeat(k, H // KVH, axis=0))[None].to(dev)
    tv = torch.from_numpy(np.repeat(v, H // KVH, axis=0))[None].to(dev)
    mask = None
    if causal and S != T:
        mask = (torch.arange(T)[None, :] <= (T - S + torch.arange(S))[:, None]).to(dev)
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run():
        out = sdpa(tq, tk, tv, attn_mask=mask, is_causal=causal and S == T)
        if dev == "cuda":
            torch.cuda.synchronize()
        return out
    out = run()
    times = []
    for _ in range(5):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), dev, out[0].cpu().numpy()


def measure(case, configs, reps, n_rounds, quick, rng):
    name, H, KVH, S, T, D, causal = case
    q = rng.standard_normal((H, S, D), dtype=np.float32)
    k = rng.standard_normal((KVH, T, D), dtype=np.float32)
    v = rng.standard_normal((KVH, T, D), dtype=np.float32)
    qt, kt, vt = kdsl.tensor(q), kdsl.tensor(k), kdsl.tensor(v)
    out = kdsl.empty((H, S, D))
    flops = 4 * D * H * visible_pairs(S, T, causal)
    kv_bytes = 2 * KVH * T * D * 4
    peer = torch_sdpa(q, k, v, causal)
    rows = []
    copy_floats = (1 << 22) if quick else (1 << 26)
    for config in configs:
        def run():
            return attention(qt, kt, vt, causal=causal, out=out, config=config)
        rounds = common.rounds_beside_copy(run, kdsl.current_device(), n_rounds, reps,
                                           copy_floats, flush_cache=S == 1)
        if peer is not None and not np.allclose(out.numpy(), peer[2], rtol=1e-3, atol=1e-3):
            raise AssertionError(f"{name}: kdsl attention (config {config}) disagrees with torch")
        seconds, wall = min(rounds["kdsl_s"]), min(rounds["wall_s"])
        used = dict(attention_config(S, T, D, H // KVH, KVH), **(config or {}))
        row = {"case": name, "H": H, "KVH": KVH, "S": S, "T": T, "D": D, "causal": causal,
               "config": used, "kdsl_ms": seconds * 1e3, "wall_ms": wall * 1e3,
               "kdsl_gflops": flops / seconds / 1e9, "kv_gbps": common.gbps(kv_bytes, seconds),
               "copy_gbps": max(rounds["copy_gbps"]), "rounds": rounds,
               "caches_flushed": S == 1,
               "torch_ms": None, "torch_device": None, "torch_gflops": None, "vs_torch": None}
        row["of_copy"] = row["kv_gbps"] / row["copy_gbps"]
        if peer is not None:
            row.update(torch_ms=peer[0] * 1e3, torch_device=peer[1],
                       torch_gflops=flops / peer[0] / 1e9, vs_torch=peer[0] / wall)
        rows.append(row)
        print(f"  {name}: {config or 'default'}: {row['kdsl_ms']:.2f} ms device, "
              f"{row['wall_ms']:.2f} ms wall", flush=True)
    best = min(rows, key=lambda r: r["kdsl_ms"])
    for row in rows:
        row["best"] = row is best
    return rows


def main(argv=None):
    args = common.parse_args(__doc__.splitlines()[0], argv, rounds=3, extra=[
        (("--sweep",), {"action": "store_true",
                        "help": "also time the configs of CPU_SWEEP / GPU_SWEEP"})])
    sweep = args.sweep
    device = kdsl.current_device()
    cases = QUICK_CASES if args.quick else GPU_CASES if device.is_gpu else CPU_CASES
    configs = [None] + ((GPU_SWEEP if device.is_gpu else CPU_SWEEP) if sweep else [])
    copy_gbps = common.device_header(device, args.quick)
    rng = np.random.default_rng(0)
    rows = []
    for case in cases:
        rows += measure(case, configs, 2 if args.quick else 5, args.rounds, args.quick, rng)
    best = [r for r in rows if r["best"]]
    print("\nattention, best config per case. kdsl ms: device time (decode: caches flushed); "
          "wall ms: per call, back to back; of copy bw: K+V GB/s over the best copy of the "
          "case's rounds; vs torch = torch ms / wall ms, > 1 means kdsl is faster")
    common.print_table(best, [
        ("case", "case", "{}"), ("H", "H", "{}"), ("KVH", "KVH", "{}"), ("S", "S", "{}"),
        ("T", "T", "{}"), ("D", "D", "{}"), ("kdsl_ms", "kdsl ms", "{:.3f}"),
        ("wall_ms", "wall ms", "{:.3f}"),
        ("kdsl_gflops", "kdsl GFLOP/s", "{:.1f}"), ("kv_gbps", "K+V GB/s", "{:.1f}"),
        ("of_copy", "of copy bw", "{:.0%}"), ("torch_ms", "torch ms", "{:.3f}"),
        ("vs_torch", "vs torch", "{:.2f}"),
    ] if all(r["torch_ms"] for r in best) else [
        ("case", "case", "{}"), ("kdsl_ms", "kdsl ms", "{:.3f}"),
        ("wall_ms", "wall ms", "{:.3f}"), ("of_copy", "of copy bw", "{:.0%}"),
        ("kdsl_gflops", "kdsl GFLOP/s", "{:.1f}"), ("kv_gbps", "K+V GB/s", "{:.1f}")])
    path = common.write_results("attention", device, rows,
                                {"copy_bandwidth_gbps": copy_gbps, "quick": args.quick,
                                 "sweep": sweep, "rounds": args.rounds}, args.json)
    print(f"\nwrote {path}")
    if not args.no_plot:
        labels = [r["case"] for r in best]
        xs = [2 ** i for i in range(len(best))]
        series = {"kdsl (wall)": (xs, [r["wall_ms"] for r in best])}
        if all(r["torch_ms"] for r in best):
            series["torch SDPA"] = (xs, [r["torch_ms"] for r in best])
        plotted = common.plot_results(path.with_suffix(".png"),
                                      f"attention on {device.name}: " + ", ".join(labels),
                                      series, "case (in the order of the title)", "ms per call")
        if plotted:
            print(f"wrote {plotted}")


if __name__ == "__main__":
    main()
