"""The shapes a model runs, as tuning tasks: (kernel, key) pairs.

A Llama-family decoder runs the same few matrix shapes in every layer: the
Q, K/V, O, gate/up and down projections, the LM head, at M = 1 (decode) and
M = the prefill chunk. Its dimensions come from a Hugging Face folder's
config.json or a GGUF file's metadata, read here directly so tuning does not
wait for the engine:

    >>> dims = model_dims("SmolLM2-135M-Instruct.Q4_1.gguf")
    >>> dims.hidden, dims.intermediate, dims.heads, dims.kv_heads, dims.head_dim
    (576, 1536, 9, 3, 64)
    >>> tasks(dims, prefill=[128])[:2]
    [Task(kernel='gemv', key={'N': 960, 'K': 576, 'trans_b': True}, ...), ...]
"""
import dataclasses
import json
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """The dimensions of a Llama-family decoder that decide its kernels' shapes."""
    name: str
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


# Standard shapes when no model is given: the default model the installer
# ships (SmolLM2-135M), and a 7B Llama for machines with the memory for it.
STANDARD = {
    "smollm2-135m": ModelDims("smollm2-135m", 576, 1536, 9, 3, 64, 49152),
    "llama-7b": ModelDims("llama-7b", 4096, 11008, 32, 32, 128, 32000),
}


@dataclasses.dataclass(frozen=True)
class Task:
    """One tuning job: a kernel at one key, with `note` saying where the shape comes from."""
    kernel: str
    key: dict
    note: str = ""


def model_dims(path):
    """Read a model's dimensions from a HF folder (config.json), a config.json or a GGUF file."""
    path = Path(path)
    if path.is_dir():
        config = path / "config.json"
        ggufs = sorted(path.glob("*.gguf"))
        if config.exists():
            return _from_hf_config(config)
        if ggufs:
            return _from_gguf(ggufs[0])
        raise ValueError(f"--model {path}: the folder has neither config.json nor a .gguf file")
    if not path.exists():
        raise ValueError(f"--model {path}: no such file or folder")
    if path.suffix == ".gguf":
        return _from_gguf(path)
    if path.suffix == ".json":
        return _from_hf_config(path)
    raise ValueError(f"--model {path}: give a Hugging Face model folder, its config.json, or a "
                     f".gguf file")


def _from_hf_config(path):
    try:
        config = json.loads(Path(path).read_text())
    except ValueError as error:
        raise ValueError(f"--model: {path} is not valid JSON ({error})") from None
    config = config.get("text_config", config)      # multimodal configs nest the decoder's
    try:
        hidden = config["hidden_size"]
        heads = config["num_attention_heads"]
        return ModelDims(name=config.get("_name_or_path") or Path(path).parent.name,
                         hidden=hidden, intermediate=config["intermediate_size"], heads=heads,
                         kv_heads=config.get("num_key_value_heads") or heads,
                         head_dim=config.get("head_dim") or hidden // heads,
                         vocab=config["vocab_size"])
    except KeyError as missing:
        raise ValueError(f"--model: {path} has no {missing} (is it a decoder LLM's "
                         f"config.json?)") from None


def _from_gguf(path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise ValueError(f"--model {path}: reading GGUF files needs the gguf package "
                         "(pip install gguf)") from None
    try:
        reader = GGUFReader(str(path))
    except Exception as error:          # gguf raises assorted errors on damaged files
        raise ValueError(f"--model: cannot read GGUF file {path} ({error})") from None

    def field(name, default=None):
        f = reader.fields.get(name)
        if f is None or not f.data:
            if default is None:
                raise ValueError(f"--model: GGUF file {path} has no {name!r} in its metadata")
            return default
        value = f.parts[f.data[0]]
        return bytes(value).decode() if f.types[0].name == "STRING" else int(value[0])

    arch = field("general.architecture")
    hidden = field(f"{arch}.embedding_length")
    heads = field(f"{arch}.attention.head_count")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab = field(f"{arch}.vocab_size", len(tokens.data) if tokens is not None else -1)
    if vocab < 0:
        raise ValueError(f"--model: GGUF file {path} gives no vocabulary size")
    return ModelDims(name=field("general.name", Path(path).stem), hidden=hidden,
                     intermediate=field(f"{arch}.feed_forward_length"), heads=heads,
                     kv_heads=field(f"{arch}.attention.head_count_kv", heads),
                     head_dim=field(f"{arch}.attention.key_length", hidden // heads),
                     vocab=vocab)


# How the engine lays out a decoder's weights (engine/weights.py): Q, K and V
# fused into one weight, gate and up into another, FP4 in groups of 32, the LM
# head never FP4; prefill in chunks of 128 tokens on a CPU and 256 on a GPU
# (engine/llm.py). The tuner must time the shapes the engine launches: a
# config tuned for a shape it never runs only reaches it as the "nearest" key.
# tests/test_autotune_engine_shapes.py checks these against the engine's launches.
ENGINE_FP4_GROUP_SIZE = 32
ENGINE_PREFILL_CHUNK = {"cpu": 128, "gpu": 256}


def linear_shapes(dims):
    """(N, K, what, fp4) of every distinct linear layer the engine runs: weights
    are [N, K] (x @ W.T); fp4: packed as FP4 with quant="m0e4"."""
    q = dims.heads * dims.head_dim
    kv = dims.kv_heads * dims.head_dim
    shapes = [(q + 2 * kv, dims.hidden, "qkv_proj", True),
              (dims.hidden, q, "o_proj", True),
              (2 * dims.intermediate, dims.hidden, "gate_up_proj", True),
              (dims.hidden, dims.intermediate, "down_proj", True),
              (dims.vocab, dims.hidden, "lm_head", False)]
    seen, distinct = set(), []
    for n, k, what, packed in shapes:
        if (n, k, packed) not in seen:
            seen.add((n, k, packed))
            distinct.append((n, k, what, packed))
    return distinct


def tasks(dims, prefill=(128,), contexts=(256, 1024), kernels=None,
          group_size=ENGINE_FP4_GROUP_SIZE):
    """Every tuning task for a model: decode (M = 1) first, as it dominates generation.
    GEMV and GEMM come with fp32 and with fp16 weights (quant="fp32" and "fp16"),
    FP4 ones for quant="m0e4".

    prefill: the M of prefill chunks (the engine's chunk size); contexts:
    attention lengths whose score rows softmax normalises (plus the
    vocabulary for sampling). `kernels` keeps only those kernel names. The LM
    head runs at M = 1 only (prefill keeps the last row's logits).
    """
    out = []
    for n, k, what, packed in linear_shapes(dims):
        out.append(Task("gemv", {"N": n, "K": k, "trans_b": True}, f"{what} decode"))
        out.append(Task("gemv", {"N": n, "K": k, "trans_b": True, "b_dtype": "float16"},
                        f"{what} decode, fp16"))
        if packed:
            out.append(Task("fp4_gemv", {"N": n, "K": k, "G": group_size},
                            f"{what} decode, fp4"))
    for t in sorted(set(contexts)) + [dims.vocab]:
        what = "sampling" if t == dims.vocab else f"attention over {t} positions"
        out.append(Task("softmax", {"N": t}, what))
    for m in prefill:
        for n, k, what, packed in linear_shapes(dims):
            if not packed:
                continue
            out.append(Task("matmul", {"M": m, "N": n, "K": k, "trans_b": True},
                            f"{what} prefill"))
            out.append(Task("matmul", {"M": m, "N": n, "K": k, "trans_b": True,
                                       "b_dtype": "float16"}, f"{what} prefill, fp16"))
            out.append(Task("fp4_gemm", {"M": m, "N": n, "K": k, "G": group_size},
                            f"{what} prefill, fp4"))
    if kernels is not None:
        out = [task for task in out if task.kernel in kernels]
    # a GEMV shape shared by a packed layer and the LM head is timed once
    unique = {(t.kernel, tuple(sorted(t.key.items()))): t for t in reversed(out)}
    return [t for t in out if unique[(t.kernel, tuple(sorted(t.key.items())))] is t]
