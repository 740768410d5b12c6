"""A Hugging Face Llama folder with SmolLM2-135M's (or Llama-2-7B's) shapes and random weights, for speed runs.

    python3 bench/random_model.py OUT_DIR [--tokenizer tokenizer.json[.gz] | model.gguf]
                                          [--layers 30] [--dtype f16] [--seed 0]
                                          [--shapes smollm2-135m | llama2-7b]

Writes config.json (SmolLM2-135M-Instruct's shapes: 30 layers, hidden 576,
9 heads, 3 KV heads, head_dim 64, FFN 1536, vocabulary 49152, RoPE base 1e5,
RMS eps 1e-5, tied embeddings), model.safetensors (normal weights, std 0.02,
norms 1; written with numpy alone), generation_config.json and
tokenizer.json. The tokenizer comes from --tokenizer: a tokenizer.json, a
gzipped one, or a GGUF (rebuilt with the engine's tokenizer code); without
one, a placeholder word-level vocabulary of the right size is written (the
benchmarks feed random ids, so only its size matters).

`--shapes llama2-7b` takes Llama-2-7B's instead (32 layers, hidden 4096, 32
heads of 128, FFN 11008, vocabulary 32000, RoPE base 1e4, untied): the
weight shapes where a GPU's decode GEMVs are bandwidth-bound; with
`--layers 4` the file is 1.9 GB.

config.json carries "kdsl_random_weights": true, and bench/llm.py labels its
results as random weights: such a model measures speed, never quality.
"""
import argparse
import gzip
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's engine

SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
    "vocab_size": 49152, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0, "rope_scaling": None, "tie_word_embeddings": True,
    "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
    "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2,
    "use_cache": True,
}
LLAMA2_7B = dict(SMOLLM2_135M, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, head_dim=128, vocab_size=32000,
                 max_position_embeddings=4096, rope_theta=10000.0, tie_word_embeddings=False)
SHAPES = {"smollm2-135m": SMOLLM2_135M, "llama2-7b": LLAMA2_7B}
STD = 0.02
_ST_DTYPES = {"f16": ("F16", np.float16), "bf16": ("BF16", None), "f32": ("F32", np.float32)}


def tensor_shapes(config):
    """HF tensor name -> shape, in the order they are written."""
    h, ffn, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    shapes = {"model.embed_tokens.weight": (config["vocab_size"], h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "self_attn.q_proj.weight": (q, h),
            p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, q), p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (ffn, h), p + "mlp.up_proj.weight": (ffn, h),
            p + "mlp.down_proj.weight": (h, ffn)})
    shapes["model.norm.weight"] = (h,)
    if not config.get("tie_word_embeddings", True):
        shapes["lm_head.weight"] = (config["vocab_size"], h)
    return shapes


def _encode(values, dtype):
    if dtype == "bf16":                   # round to nearest even, keep the top half
        bits = values.astype(np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return values.astype(_ST_DTYPES[dtype][1])


def write_safetensors(path, shapes, dtype="f16", seed=0):
    """Random weights (norms: ones) straight to a .safetensors file; returns the parameter count."""
    st_dtype, _ = _ST_DTYPES[dtype]
    itemsize = 4 if dtype == "f32" else 2
    header, offset = {"__metadata__": {"format": "pt", "kdsl": "random weights"}}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": st_dtype, "shape": list(shape), "data_offsets": [offset,
                                                                                   offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)        # the data starts 8-byte aligned
    rng = np.random.default_rng(seed)
    count = 0
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in shapes.items():
            if name.endswith("norm.weight"):
                values = np.ones(shape, np.float32)
            else:
                values = rng.standard_normal(shape, dtype=np.float32)
                values *= STD
            f.write(np.ascontiguousarray(_encode(values, dtype)).tobytes())
            count += values.size
    return count


def write_tokenizer(out_dir, source, vocab):
    """tokenizer.json in `out_dir` from `source` (json, json.gz, gguf or None); returns a note."""
    target = Path(out_dir) / "tokenizer.json"
    if source and str(source).endswith(".gz"):
        with gzip.open(source, "rb") as f, open(target, "wb") as g:
            shutil.copyfileobj(f, g)
        return f"tokenizer.json from {source}"
    if source and str(source).endswith(".gguf"):
        from engine.gguf_loader import GGUFModel
        from engine.tokenizer import Tokenizer
        model = GGUFModel(source)
        Tokenizer.from_gguf_spec(model.tokenizer_spec(), source).backend.save(str(target))
        return f"tokenizer rebuilt from {source}"
    if source:
        shutil.copyfile(source, target)
        return f"tokenizer.json from {source}"
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = {f"t{i}": i for i in range(vocab)}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(target))
    return "placeholder word-level tokenizer (no --tokenizer given)"


def build(out_dir, tokenizer=None, layers=None, dtype="f16", seed=0, shapes="smollm2-135m"):
    """Write the folder; returns (parameter count, tokenizer note)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(SHAPES[shapes], kdsl_random_weights=True, dtype={"f16": "float16",
                  "bf16": "bfloat16", "f32": "float32"}[dtype])
    if layers is not None:
        config["num_hidden_layers"] = layers
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}, indent=1) + "\n")
    note = write_tokenizer(out, tokenizer, config["vocab_size"])
    count = write_safetensors(out / "model.safetensors", tensor_shapes(config), dtype, seed)
    (out / "RANDOM_WEIGHTS.txt").write_text(
        f"Random weights with {shapes}'s shapes (bench/random_model.py): speed runs only.\n")
    return count, note


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tokenizer", help="tokenizer.json, tokenizer.json.gz or a .gguf")
    parser.add_argument("--layers", type=int, help="fewer layers (default: the model's, 30 or 32)")
    parser.add_argument("--dtype", choices=sorted(_ST_DTYPES), default="f16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="smollm2-135m")
    args = parser.parse_args(argv)
    tokenizer = args.tokenizer
    if tokenizer and not os.path.exists(tokenizer):
        print(f"warning: {tokenizer} does not exist; writing a placeholder tokenizer")
        tokenizer = None
    count, note = build(args.out_dir, tokenizer, args.layers, args.dtype, args.seed, args.shapes)
    size = (args.out_dir / "model.safetensors").stat().st_size
    print(f"wrote {args.out_dir}: {count / 1e6:.1f}M random parameters ({args.dtype}, "
          f"{size / 2**20:.0f} MiB), {note}")


if __name__ == "__main__":
    main()
