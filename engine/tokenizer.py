"""Text <-> token ids, and the chat template, for GGUF files and Hugging Face folders.

A GGUF file carries its byte-level BPE (vocabulary, merges, token types, the
pre-tokenizer's name) in its metadata; `from_gguf_spec` rebuilds it with the
`tokenizers` library. A Hugging Face folder has a tokenizer.json.
"""
import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, Regex, Tokenizer as HFTokenizer, decoders, models
from tokenizers import pre_tokenizers

from .config import ModelFormatError

# llama.cpp's pre-tokenizer names -> the split it stands for (llama-vocab.cpp).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED = 3, 4


def _pre_tokenizer(name, path):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bytes_only = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if name in (None, "default", "gpt2", "gpt-2"):
        return byte_level
    if name == "smollm":           # digits one by one, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        byte_level])
    if name in ("llama-bpe", "llama3", "smaug-bpe"):
        split = _LLAMA3_SPLIT
    elif name in ("qwen2", "deepseek-r1-qwen"):
        split = _QWEN2_SPLIT
    else:
        raise ModelFormatError(f"{path}: the GGUF pre-tokenizer {name!r} is not supported "
                               "(supported: gpt2, smollm, llama-bpe, qwen2)")
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False), bytes_only])


class Tokenizer:
    """Encode, decode and apply the chat template.

    >>> tok = Tokenizer.from_gguf_spec(model.tokenizer_spec(), path)
    >>> tok.decode(tok.encode("Hello world"))
    'Hello world'
    """

    def __init__(self, backend, *, bos_id=None, add_bos=False, eos_ids=(), chat_template=None,
                 path=""):
        self.backend = backend
        self.bos_id = bos_id
        self.add_bos = add_bos
        self.eos_ids = frozenset(eos_ids)
        self.chat_template = chat_template
        self.path = path

    @classmethod
    def from_gguf_spec(cls, spec, path):
        """Rebuild the byte-level BPE a GGUF file describes (tokenizer.ggml.model 'gpt2')."""
        if spec.get("model") != "gpt2":
            raise ModelFormatError(f"{path}: tokenizer model {spec.get('model')!r} is not "
                                   "supported; the engine reads byte-level BPE ('gpt2')")
        tokens = spec["tokens"]
        vocab = {token: i for i, token in enumerate(tokens)}
        merges = [tuple(merge.split(" ", 1)) for merge in spec["merges"]]
        try:
            backend = HFTokenizer(models.BPE(vocab, merges, fuse_unk=False))
        except Exception as error:      # the Rust side raises a plain Exception
            raise ModelFormatError(f"{path}: the GGUF tokenizer is inconsistent ({error})") from error
        backend.pre_tokenizer = _pre_tokenizer(spec.get("pre"), path)
        backend.decoder = decoders.ByteLevel()
        types = spec.get("token_type", [])
        backend.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                                    for i, kind in enumerate(types)
                                    if kind == _TOKEN_TYPE_CONTROL])
        backend.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                            for i, kind in enumerate(types) if kind == _TOKEN_TYPE_USER_DEFINED])
        eos_ids = [spec[key] for key in ("eos_token_id", "eot_token_id", "eom_token_id")
                   if spec.get(key) is not None]
        im_end = vocab.get("<|im_end|>")         # ChatML's end of turn stops generation too
        if im_end is not None:
            eos_ids.append(im_end)
        return cls(backend, bos_id=spec.get("bos_token_id"),
                   add_bos=bool(spec.get("add_bos_token", False)), eos_ids=eos_ids,
                   chat_template=spec.get("chat_template"), path=path)

    @classmethod
    def from_hf_spec(cls, spec):
        """Load tokenizer.json; its post-processor adds BOS where the model wants one."""
        path = spec["tokenizer_json"]
        try:
            backend = HFTokenizer.from_file(path)
        except Exception as error:      # the Rust side raises a plain Exception
            raise ModelFormatError(f"{path}: not a readable tokenizer.json ({error})") from error
        return cls(backend, bos_id=spec.get("bos_token_id"), eos_ids=spec["eos_token_ids"],
                   chat_template=spec.get("chat_template"), path=path)

    @property
    def vocab_size(self):
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_text(self, token_id):
        return self.backend.id_to_token(token_id)

    def encode(self, text, *, special=True):
        """Token ids of `text`; `special=False` adds no BOS (for rendered chat templates)."""
        ids = self.backend.encode(text, add_special_tokens=special).ids
        if special and self.add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, *, skip_special=True):
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def apply_chat_template(self, messages, *, add_generation_prompt=True):
        """The prompt text for a list of {"role", "content"} messages, from the model's template.

        >>> tok.apply_chat_template([{"role": "user", "content": "Hi"}])[-33:]
        '<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n'
        """
        if not self.chat_template:
            raise ValueError(f"{self.path}: the model has no chat template; use generate() "
                             "with a plain prompt instead of chat()")
        for message in messages:
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise ValueError(f"chat(): each message must be a dict with 'role' and "
                                 f"'content', got {message!r}")
        # Hugging Face renders templates in a sandbox with these options and names.
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        template = env.from_string(self.chat_template)
        token = self.backend.id_to_token
        return template.render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=token(self.bos_id) if self.bos_id is not None else "",
            eos_token=token(min(self.eos_ids)) if self.eos_ids else "")


def _raise_template_error(message):
    raise ValueError(f"the chat template refused the messages: {message}")
