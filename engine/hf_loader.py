"""Read a Hugging Face model folder: config.json, *.safetensors, tokenizer files.

Tensors are renamed to the engine's names (the same ones the GGUF loader
gives) and returned as float32 [out, in] arrays, the layout they are saved in.
"""
import json
import os
import struct

import numpy as np

from .config import ModelFormatError, from_hf_config

_LAYER_TENSORS = {
    "attn_norm": "input_layernorm.weight", "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight", "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight", "bq": "self_attn.q_proj.bias",
    "bk": "self_attn.k_proj.bias", "bv": "self_attn.v_proj.bias",
    "bo": "self_attn.o_proj.bias", "ffn_norm": "post_attention_layernorm.weight",
    "w_gate": "mlp.gate_proj.weight", "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
}
_GLOBAL_TENSORS = {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight",
                   "lm_head": "lm_head.weight"}


class HFModel:
    """A Hugging Face model folder opened for loading.

    >>> model = HFModel("path/to/folder")
    >>> model.config.arch
    'llama'
    """

    def __init__(self, folder):
        self.path = str(folder)
        config_path = os.path.join(self.path, "config.json")
        self.hf_config = _read_json(config_path)
        self.config = from_hf_config(self.hf_config, config_path)
        files = sorted(f for f in os.listdir(self.path) if f.endswith(".safetensors"))
        if not files:
            raise ModelFormatError(f"{self.path}: no *.safetensors file in the model folder "
                                   "(save the model with safe_serialization=True)")
        self._where = {}                 # HF tensor name -> file
        for file in files:
            for name in _safetensors_header(os.path.join(self.path, file)):
                self._where[name] = os.path.join(self.path, file)
        self._by_engine_name = {}
        for engine_name, hf_name in _GLOBAL_TENSORS.items():
            if hf_name in self._where:
                self._by_engine_name[engine_name] = hf_name
        for i in range(self.config.n_layers):
            for engine_name, suffix in _LAYER_TENSORS.items():
                hf_name = f"model.layers.{i}.{suffix}"
                if hf_name in self._where:
                    self._by_engine_name[f"layers.{i}.{engine_name}"] = hf_name
        if self.config.tie_embeddings:
            self._by_engine_name.pop("lm_head", None)

    def names(self):
        """The engine names of the tensors this folder holds."""
        return list(self._by_engine_name)

    def tensor(self, name):
        """One tensor as float32 (bf16 and fp16 are widened)."""
        hf_name = self._by_engine_name[name]
        return _read_tensor(self._where[hf_name], hf_name)

    def tokenizer_spec(self):
        """tokenizer.json's path, the chat template and the stop token ids."""
        tokenizer_path = os.path.join(self.path, "tokenizer.json")
        if not os.path.exists(tokenizer_path):
            raise ModelFormatError(f"{self.path}: no tokenizer.json in the model folder")
        tokenizer_config = _read_json(os.path.join(self.path, "tokenizer_config.json"),
                                      missing_ok=True)
        template = tokenizer_config.get("chat_template")
        template_path = os.path.join(self.path, "chat_template.jinja")
        if template is None and os.path.exists(template_path):
            with open(template_path, encoding="utf-8") as f:
                template = f.read()
        generation = _read_json(os.path.join(self.path, "generation_config.json"),
                                missing_ok=True)
        eos = generation.get("eos_token_id", self.hf_config.get("eos_token_id"))
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        return {"tokenizer_json": tokenizer_path, "chat_template": template,
                "eos_token_ids": eos_ids, "bos_token_id": self.hf_config.get("bos_token_id")}


def _read_json(path, missing_ok=False):
    if missing_ok and not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: missing; a Hugging Face model folder needs it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFormatError(f"{path}: not valid JSON ({error})") from error


def _safetensors_header(path):
    """The tensor table of a .safetensors file: name -> {dtype, shape, data_offsets}.

    Read directly (8-byte length, then JSON) because the safetensors package
    cannot hand bf16 tensors to numpy.
    """
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModelFormatError(f"{path}: not a readable safetensors file ({error})") from error
    header.pop("__metadata__", None)
    return header


_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def _read_tensor(path, name):
    entry = _safetensors_header(path)[name]
    if entry["dtype"] not in _DTYPES:
        raise ModelFormatError(f"{path}: tensor {name} has dtype {entry['dtype']}, which the "
                               f"engine cannot load (it reads {', '.join(_DTYPES)})")
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
    start, end = entry["data_offsets"]
    raw = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + length + start,
                    shape=(end - start,))
    values = raw.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])
    if entry["dtype"] == "BF16":      # bf16 is the top half of an fp32
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return np.array(values, dtype=np.float32)
