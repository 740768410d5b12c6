"""Read a GGUF file: metadata, tokenizer spec and tensors dequantised to float32.

The header is read by gguf_header.py, the tensors' bytes are memory-mapped,
and the `gguf` package dequantises them.

Tensors are renamed to the engine's names (see `weight_names`) and laid out as
Hugging Face stores them: linear weights [out, in]. llama.cpp's converter
permutes the rows of Q and K so that RoPE rotates adjacent pairs; the loader
undoes that, so one (rotate-half) RoPE serves GGUF and Hugging Face models.
"""
import math

import numpy as np

from .config import ModelFormatError, from_gguf_metadata
from .gguf_header import read_header

# engine name per layer -> GGUF name
_LAYER_TENSORS = {
    "attn_norm": "attn_norm.weight", "wq": "attn_q.weight", "wk": "attn_k.weight",
    "wv": "attn_v.weight", "wo": "attn_output.weight", "bq": "attn_q.bias",
    "bk": "attn_k.bias", "bv": "attn_v.bias", "bo": "attn_output.bias",
    "ffn_norm": "ffn_norm.weight", "w_gate": "ffn_gate.weight", "w_up": "ffn_up.weight",
    "w_down": "ffn_down.weight",
}
_GLOBAL_TENSORS = {"embed": "token_embd.weight", "norm": "output_norm.weight",
                   "lm_head": "output.weight"}


class GGUFModel:
    """A GGUF file opened for loading (memory-mapped; tensors are read on demand).

    >>> model = GGUFModel(path)
    >>> model.config.n_layers, sorted(model.names())[:2]
    (30, ['embed', 'layers.0.attn_norm'])
    """

    def __init__(self, path):
        self.path = str(path)
        try:
            self._bytes = np.memmap(self.path, dtype=np.uint8, mode="r")
            self.metadata, infos = read_header(self._bytes)
        except (OSError, ValueError) as error:        # GGUFHeaderError, or an empty file
            raise ModelFormatError(f"{self.path}: not a readable GGUF file ({error})") from error
        self._tensors = {t.name: t for t in infos}
        if len(self._tensors) != len(infos):
            raise ModelFormatError(f"{self.path}: a tensor name appears twice in the header")
        self.config = from_gguf_metadata(self.metadata, self._tensors, self.path)
        self._by_engine_name = {}
        for engine_name, gguf_name in _GLOBAL_TENSORS.items():
            if gguf_name in self._tensors:
                self._by_engine_name[engine_name] = gguf_name
        for i in range(self.config.n_layers):
            for engine_name, suffix in _LAYER_TENSORS.items():
                if f"blk.{i}.{suffix}" in self._tensors:
                    self._by_engine_name[f"layers.{i}.{engine_name}"] = f"blk.{i}.{suffix}"

    def names(self):
        """The engine names of the tensors this file holds."""
        return list(self._by_engine_name)

    def tensor(self, name):
        """One tensor as float32, [out, in] for linear weights, RoPE permutation undone."""
        import gguf
        info = self._tensors[self._by_engine_name[name]]
        # GGUF lists dimensions innermost first; numpy wants them outermost first.
        shape = tuple(int(d) for d in reversed(info.dims))
        try:
            qtype = gguf.GGMLQuantizationType(info.ggml_type)
        except ValueError:
            raise ModelFormatError(f"{self.path}: tensor {info.name} has ggml type "
                                   f"{info.ggml_type}, which the installed gguf package does not "
                                   f"know; upgrade it (pip install -U gguf) or convert the model "
                                   f"to F16, Q8_0 or Q4_1") from None
        try:
            values = gguf.quants.dequantize(self._stored(info, qtype, shape), qtype)
        except (NotImplementedError, ValueError, KeyError) as error:
            # the gguf package has no numpy dequantiser for this type (NotImplementedError),
            # or no block size for it (KeyError), or its bytes do not fit the shape
            raise ModelFormatError(f"{self.path}: tensor {info.name} of type {qtype.name} "
                                   f"cannot be dequantised ({error!r}); convert the model to "
                                   f"F16, Q8_0 or Q4_1") from error
        values = np.asarray(values, dtype=np.float32).reshape(shape)
        kind = name.rsplit(".", 1)[-1]
        if kind in ("wq", "bq"):
            values = unpermute_rope_rows(values, self.config.n_heads)
        elif kind in ("wk", "bk"):
            values = unpermute_rope_rows(values, self.config.n_kv_heads)
        return values

    def _stored(self, info, qtype, shape):
        """The tensor's bytes in the file, typed as gguf.quants.dequantize takes them:
        float and integer types as arrays of their shape, block-quantised types
        as rows of bytes."""
        import gguf
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        n_bytes = math.prod(shape) * type_size // block
        end = info.offset + n_bytes
        if end > len(self._bytes):
            raise ModelFormatError(f"{self.path}: tensor {info.name} ends at byte {end}, past the "
                                   f"file's {len(self._bytes)} (a truncated file?)")
        raw = self._bytes[info.offset:end]
        plain = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I8": np.int8,
                 "I16": np.int16, "I32": np.int32, "I64": np.int64}.get(qtype.name)
        if plain is not None:
            return raw.view(plain).reshape(shape)
        return raw.reshape(gguf.quant_shape_to_byte_shape(shape, qtype))

    def tokenizer_spec(self):
        """The tokenizer.ggml.* metadata and the chat template, as a dict."""
        spec = {key[len("tokenizer.ggml."):]: value for key, value in self.metadata.items()
                if key.startswith("tokenizer.ggml.")}
        spec["chat_template"] = self.metadata.get("tokenizer.chat_template")
        return spec


def unpermute_rope_rows(values, n_heads):
    """Undo llama.cpp's Q/K row order (pairs interleaved per head) back to rotate-half order.

    llama.cpp's convert_hf_to_gguf reshapes each head's rows as (2, half) and
    swaps the axes to (half, 2); this swaps them back.

    >>> unpermute_rope_rows(np.array([0, 2, 1, 3]), 1)
    array([0, 1, 2, 3])
    """
    rows = values.shape[0]
    head_dim = rows // n_heads
    rest = values.shape[1:]
    return (values.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2)
            .reshape(rows, *rest))

