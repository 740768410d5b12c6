"""The model's hyper-parameters, read from GGUF metadata or a Hugging Face config.json.

Only the Llama family is supported: Llama, Mistral (a sliding window) and
Qwen2 (biases on the Q/K/V projections). Everything the forward pass needs is
here, so model.py never looks at a file format.
"""
import dataclasses

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")


class ModelFormatError(ValueError):
    """A model file or folder that cannot be loaded; the message names the file."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and constants of a Llama-family decoder.

    >>> cfg = ModelConfig("llama", n_layers=2, hidden=64, n_heads=4, n_kv_heads=2,
    ...                   ffn=128, vocab=100)
    >>> cfg.head_dim, cfg.q_size, cfg.kv_size
    (16, 64, 32)
    """
    arch: str
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    vocab: int
    head_dim: int = 0            # 0: hidden // n_heads
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    context_length: int = 2048
    tie_embeddings: bool = False
    sliding_window: int | None = None

    def __post_init__(self):
        if self.arch not in SUPPORTED_ARCHITECTURES:
            raise ModelFormatError(f"architecture {self.arch!r} is not supported; the engine "
                                   f"runs {', '.join(SUPPORTED_ARCHITECTURES)}")
        if not self.head_dim:
            object.__setattr__(self, "head_dim", self.hidden // self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ModelFormatError(f"{self.n_heads} attention heads cannot share "
                                   f"{self.n_kv_heads} key/value heads evenly")

    @property
    def q_size(self):
        return self.n_heads * self.head_dim

    @property
    def kv_size(self):
        return self.n_kv_heads * self.head_dim


def from_gguf_metadata(fields, tensor_names, path):
    """A ModelConfig from a GGUF file's key/value metadata (a name -> value dict).

    A file without an 'output.weight' tensor ties the LM head to the embedding.
    """
    arch = fields.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelFormatError(f"{path}: GGUF architecture {arch!r} is not supported; the "
                               f"engine runs {', '.join(SUPPORTED_ARCHITECTURES)}")

    def get(key, default=None):
        value = fields.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelFormatError(f"{path}: the GGUF metadata lacks '{arch}.{key}'")
        return value

    n_heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    vocab = fields.get(f"{arch}.vocab_size") or len(fields.get("tokenizer.ggml.tokens", ()))
    window = fields.get(f"{arch}.attention.sliding_window")
    return ModelConfig(
        arch=arch, n_layers=int(get("block_count")), hidden=hidden, n_heads=n_heads,
        n_kv_heads=int(get("attention.head_count_kv", n_heads)),
        ffn=int(get("feed_forward_length")), vocab=int(vocab),
        head_dim=int(get("attention.key_length", hidden // n_heads)),
        rope_base=float(get("rope.freq_base", 10000.0)),
        rms_eps=float(get("attention.layer_norm_rms_epsilon")),
        context_length=int(get("context_length", 2048)),
        tie_embeddings="output.weight" not in tensor_names, sliding_window=int(window) if window else None)


def from_hf_config(config, path):
    """A ModelConfig from a Hugging Face config.json dict."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise ModelFormatError(f"{path}: model_type {model_type!r} is not supported; the "
                               f"engine runs {', '.join(SUPPORTED_ARCHITECTURES)}")
    scaling = config.get("rope_scaling") or {}
    if scaling and scaling.get("rope_type", scaling.get("type")) not in (None, "default"):
        raise ModelFormatError(f"{path}: RoPE scaling {scaling!r} is not supported")
    n_heads = config["num_attention_heads"]
    window = config.get("sliding_window") if config.get("use_sliding_window", True) else None
    rope_base = config.get("rope_theta")
    if rope_base is None:        # transformers 5 keeps it in rope_parameters
        rope_base = (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return ModelConfig(
        arch=model_type, n_layers=config["num_hidden_layers"], hidden=config["hidden_size"],
        n_heads=n_heads, n_kv_heads=config.get("num_key_value_heads") or n_heads,
        ffn=config["intermediate_size"], vocab=config["vocab_size"],
        head_dim=config.get("head_dim") or config["hidden_size"] // n_heads,
        rope_base=float(rope_base), rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        context_length=int(config.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        sliding_window=int(window) if window else None)
