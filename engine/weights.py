"""Weights in the layout the forward pass wants, quantised at load and cached on disk.

The loaders give float32 tensors under the engine's names; `prepare` fuses
Q/K/V into one [q + 2 kv, hidden] weight and gate/up into one [2 ffn, hidden]
weight (one matmul each instead of three and two), casts the linear weights
to fp32 or fp16 or packs them to FP4 (m0e4; the embedding and LM head stay
fp16 there), and stores the result under
$KDSL_CACHE_DIR/engine/<key>/ as one .npy file per array, so the second load
only memory-maps those files.
"""
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
from tqdm import tqdm

from kdsl_kernels import int8

QUANTS = ("m0e4", "fp16", "fp32")
# Groups of 32 line up with GGUF's Q4_0/Q4_1 blocks, whose 16-level grids FP4's
# uniform reading then holds almost exactly: on SmolLM2 (Q4_1) groups of 64 cost
# 30% perplexity, groups of 32 nothing measurable (tests/test_engine_model.py).
FP4_GROUP_SIZE = 32
# Bump when the prepared layout changes, so old caches are ignored.
CACHE_FORMAT = 3


def check_quant(quant):
    if quant not in QUANTS:
        raise ValueError(f"unknown quant {quant!r}; choose one of {', '.join(QUANTS)}")


def cache_root():
    """Where prepared weights live: $KDSL_CACHE_DIR/engine (default ~/.cache/kdsl/engine)."""
    from kdsl.cache import cache_dir
    return cache_dir() / "engine"


def cache_key(model_path, quant):
    """Names a prepared copy: the model file(s) by path, size and mtime, the quant, the format."""
    paths = [model_path]
    if os.path.isdir(model_path):
        paths = sorted(os.path.join(model_path, f) for f in os.listdir(model_path))
    parts = [f"{os.path.abspath(p)}:{os.path.getsize(p)}:{os.stat(p).st_mtime_ns}" for p in paths
             if os.path.isfile(p)]
    parts += [quant, str(CACHE_FORMAT), _quantiser_version() if quant == "m0e4" else ""]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _quantiser_version():
    """The FP4 packer's source hash: a changed quantiser must not reuse old packs."""
    from kdsl_kernels import fp4
    with open(fp4.__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def load(model, quant, *, use_cache=True, progress=True):
    """The prepared weights of an opened model (GGUFModel or HFModel): name -> array or PackedWeight.

    >>> weights = load(GGUFModel(path), "fp16")
    >>> weights["layers.0.wqkv"].shape
    (960, 576)
    """
    check_quant(quant)
    folder = cache_root() / cache_key(model.path, quant)
    if use_cache and (folder / "index.json").exists():
        try:
            return _read_cache(folder)
        except (OSError, ValueError, KeyError) as error:
            # a damaged cache is rebuilt rather than trusted
            print(f"kdsl-llm: ignoring a damaged weight cache at {folder} ({error})")
    weights = prepare(model, quant, progress=progress)
    if use_cache:
        _write_cache(folder, weights)
    return weights


def prepare(model, quant, *, progress=True):
    """Read every tensor, fuse, and cast or pack it as `quant` says."""
    cfg = model.config
    names = set(model.names())
    missing = [n for n in ("embed", "norm") if n not in names]
    if not cfg.tie_embeddings and "lm_head" not in names:
        missing.append("lm_head")
    if missing:
        raise ValueError(f"{model.path}: tensor(s) {missing} are missing from the model")
    steps = tqdm(total=cfg.n_layers + 1, desc=f"preparing weights ({quant})", unit="layer",
                 disable=not progress, leave=False)
    with steps:
        embed = model.tensor("embed")
        weights = {"embed": embed if quant == "fp32" else embed.astype(np.float16),
                   "norm": model.tensor("norm")}
        # The LM head is never FP4: on SmolLM2 an FP4 head alone costs 8% perplexity.
        # With m0e4 it is int8 with a scale per 32 (llama.cpp's Q8_0: half fp16's
        # bytes, 0.75x its GEMV time on PoCL); else a tied head is the embedding
        # table itself (fp32, else fp16).
        head = model.tensor("lm_head") if not cfg.tie_embeddings else None
        if quant == "m0e4" and cfg.hidden % int8.GROUP == 0:
            packed = int8.quantize(embed if head is None else head)
            weights["lm_head.codes"], weights["lm_head.scales"] = packed.codes, packed.scales
        elif head is not None:
            weights["lm_head"] = head if quant == "fp32" else head.astype(np.float16)
        steps.update()
        for i in range(cfg.n_layers):
            def get(name, layer=i):
                full = f"layers.{layer}.{name}"
                if full not in names:
                    raise ValueError(f"{model.path}: tensor {full} is missing from the model")
                return model.tensor(full)

            prefix = f"layers.{i}."
            weights[prefix + "attn_norm"] = get("attn_norm")
            weights[prefix + "ffn_norm"] = get("ffn_norm")
            weights[prefix + "wqkv"] = _linear(np.concatenate([get("wq"), get("wk"), get("wv")]),
                                               quant)
            if f"{prefix}bq" in names:
                weights[prefix + "bqkv"] = np.concatenate([get("bq"), get("bk"), get("bv")])
            weights[prefix + "wo"] = _linear(get("wo"), quant)
            if f"{prefix}bo" in names:
                weights[prefix + "bo"] = get("bo")
            weights[prefix + "w_gate_up"] = _linear(np.concatenate([get("w_gate"), get("w_up")]),
                                                    quant)
            weights[prefix + "w_down"] = _linear(get("w_down"), quant)
            steps.update()
    return weights


def _linear(w, quant):
    w = np.ascontiguousarray(w, dtype=np.float32)
    if quant == "fp32":
        return w
    if quant == "fp16":
        return w.astype(np.float16)
    from kdsl_kernels import fp4
    return fp4.quantize(w, group_size=FP4_GROUP_SIZE)


def _write_cache(folder, weights):
    """One .npy per array plus index.json, written in a temporary folder then renamed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent)
    index = {}
    for n, (name, value) in enumerate(weights.items()):
        if isinstance(value, np.ndarray):
            index[name] = {"kind": "array", "file": f"{n}.npy"}
            np.save(os.path.join(tmp, f"{n}.npy"), value)
        else:
            fields = value.to_arrays()
            index[name] = {"kind": "fp4", "files": {f: f"{n}.{f}.npy" for f in fields}}
            for field, array in fields.items():
                np.save(os.path.join(tmp, f"{n}.{field}.npy"), array)
    with open(os.path.join(tmp, "index.json"), "w") as f:
        json.dump(index, f)
    try:
        os.replace(tmp, folder)
    except OSError:                     # another process wrote it first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(folder):
    from kdsl_kernels import fp4
    with open(folder / "index.json") as f:
        index = json.load(f)
    weights = {}
    for name, entry in index.items():
        if entry["kind"] == "array":
            weights[name] = np.load(folder / entry["file"], mmap_mode="r")
        else:
            weights[name] = fp4.PackedWeight.from_arrays(
                {field: np.load(folder / file) for field, file in entry["files"].items()})
    return weights
