"""Generation: fixed-size prefill chunks, then one token per step, with timings.

A prompt of any length runs as chunks of exactly `model.chunk` tokens (the
last one padded), so prefill always has one shape: one compiled set of
kernels, one tuned config (mllm-NPU's fixed-size chunks). The padding rows
write K/V past the prompt's end; the next step overwrites them before any
query can see them, since attention is causal and reads only the prefix.
After each chunk the device queue is drained and `on_prefill(done, total)`
is called, so a caller (a UI thread) never waits longer than one chunk.

The cache keeps the ids it holds: a new prompt that starts with them (the
next turn of a chat) only runs its new tokens.
"""
import dataclasses
import time

import numpy as np

from .sampling import Sampler


@dataclasses.dataclass
class Timings:
    """Per-phase times of the last generation, in seconds.

    prefill covers the prompt up to the first sampled token (the time to
    first token); decode covers the tokens after it.
    """
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefill_s: float = 0.0
    new_tokens: int = 0
    decode_s: float = 0.0
    finish_reason: str = ""

    @property
    def ttft_s(self):
        return self.prefill_s

    @property
    def prefill_tok_s(self):
        run = self.prompt_tokens - self.cached_tokens
        return run / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tok_s(self):
        # the first new token comes out of prefill; decode makes the rest
        return (self.new_tokens - 1) / self.decode_s if self.decode_s and self.new_tokens > 1 else 0.0

    def summary(self):
        return (f"prompt {self.prompt_tokens} tokens ({self.cached_tokens} cached), prefill "
                f"{self.prefill_tok_s:.1f} tok/s, first token after {self.ttft_s * 1000:.0f} ms; "
                f"{self.new_tokens} new tokens, decode {self.decode_tok_s:.1f} tok/s "
                f"({self.finish_reason})")


class Generator:
    """Runs a Model over token ids: prefill in chunks, then decode.

    >>> gen = Generator(model, context=2048)
    >>> ids = list(gen.stream_ids([1, 2, 3], max_new_tokens=4, params=SamplingParams(),
    ...                           stop_ids=()))          # 4 greedy token ids
    """

    def __init__(self, model, *, context):
        self.model = model
        self.context = context
        self.cached_ids = []             # the real (unpadded) ids whose K/V the cache holds
        self.timings = Timings()
        # greedy decoding picks tokens on the device and queues each step before
        # the host has read the previous token (see stream_ids)
        self.pipeline = True

    def check_prompt(self, ids, max_new_tokens, truncate):
        """The prompt's ids fitted to the context: an error, or its last tokens with truncate=True."""
        if not ids:
            raise ValueError("the prompt is empty: it must hold at least one token")
        room = self.context - 1          # at least one token is generated
        if len(ids) > room:
            if not truncate:
                raise ValueError(f"the prompt has {len(ids)} tokens but the context holds "
                                 f"{self.context} (at most {room} for the prompt); shorten it, "
                                 f"load with a larger context=, or pass truncate=True to keep "
                                 f"its last tokens")
            keep = max(1, min(room, self.context - max_new_tokens))
            ids = ids[-keep:]
        return ids

    def stream_ids(self, ids, *, max_new_tokens, params, stop_ids, on_prefill=None):
        """Yield new token ids until a stop id, max_new_tokens, or the context is full."""
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        timings = self.timings = Timings(prompt_tokens=len(ids))
        if max_new_tokens == 0:
            timings.finish_reason = "length"
            return
        sampler = Sampler(params)
        start = time.perf_counter()
        logits = self._prefill(ids, on_prefill)
        history = list(ids)
        token = sampler.pick(logits, history)
        timings.prefill_s = time.perf_counter() - start
        decode_start = time.perf_counter()
        pipelined = self.pipeline and params.greedy and params.repetition_penalty == 1.0
        ahead = None                     # the queued step's pending token, when pipelined
        try:
            while True:
                timings.new_tokens += 1
                history.append(token)
                if token in stop_ids:
                    timings.finish_reason = "stop"
                    break
                yield token
                if timings.new_tokens >= max_new_tokens or len(history) >= self.context:
                    timings.finish_reason = "length"
                    break
                self.cached_ids.append(token)
                if not pipelined:
                    logits = self.model.forward(np.array([token], np.int32), len(history) - 1)
                    token = sampler.pick(logits.numpy()[0], history)
                    continue
                if ahead is None:        # the first decode step starts from the host's token
                    self.model.forward(np.array([token], np.int32), len(history) - 1)
                    ahead = self.model.greedy_next()
                pending = ahead
                # queue the step after this one (its id comes from this one's argmax on
                # the device) before waiting for this one's token, so the device never
                # idles while the host reads the token back and handles it
                ahead = None
                if timings.new_tokens + 1 < max_new_tokens and len(history) + 1 < self.context:
                    self.model.forward(None, len(history))
                    ahead = self.model.greedy_next()
                token = int(pending.wait()[0])
        finally:                         # also when the caller stops iterating early
            timings.decode_s = time.perf_counter() - decode_start
            if ahead is not None:
                ahead.wait()             # its host array must outlive the copy into it
            # a step queued ahead of a stop holds the next position's K/V: not the cache's
            self.model.cache.length = len(self.cached_ids)

    def _prefill(self, ids, on_prefill):
        """Run the prompt's uncached tokens in fixed-size chunks; the last row's logits."""
        model, chunk = self.model, self.model.chunk
        # reuse the cached prefix, but always run the last prompt token to get its logits
        common = 0
        limit = min(len(self.cached_ids), len(ids) - 1)
        while common < limit and self.cached_ids[common] == ids[common]:
            common += 1
        self.timings.cached_tokens = common
        self.cached_ids = list(ids[:common])
        todo = len(ids) - common
        logits = None
        for start in range(common, len(ids), chunk):
            part = ids[start:start + chunk]
            padded = np.zeros(chunk, np.int32)
            padded[:len(part)] = part
            logits = model.forward(padded, start, last=len(part) - 1)
            self.cached_ids.extend(part)
            model.device.queue.finish()
            if on_prefill is not None:
                on_prefill(start + len(part) - common, todo)
        model.cache.length = len(ids)
        return logits.numpy()[0]


def bench_ids(generator, prompt_tokens, new_tokens, *, vocab, seed=0):
    """Timings of one run over a random prompt of `prompt_tokens` ids and exactly
    `new_tokens` greedy tokens (no stop ids), from an empty cache.

    >>> timings = bench_ids(generator, 512, 128, vocab=49152)
    >>> timings.prefill_tok_s, timings.decode_tok_s
    """
    from .sampling import SamplingParams
    ids = np.random.default_rng(seed).integers(0, vocab, prompt_tokens).tolist()
    generator.cached_ids = []
    for _ in generator.stream_ids(ids, max_new_tokens=new_tokens, params=SamplingParams(),
                                  stop_ids=()):
        pass
    return generator.timings


def score(generator, ids):
    """Logits [len(ids), vocab] for every position of `ids`, run after the tokens
    already in the cache (in fixed-size chunks), which then holds them too.

    The tool for fidelity tests and perplexity.

    >>> logits = score(generator, tokenizer.encode(text))
    """
    model, chunk = generator.model, generator.model.chunk
    past = len(generator.cached_ids)
    if past + len(ids) > generator.context:
        raise ValueError(f"{past} cached + {len(ids)} new tokens exceed the context of "
                         f"{generator.context}")
    rows = []
    for start in range(0, len(ids), chunk):
        part = list(ids[start:start + chunk])
        padded = np.zeros(chunk, np.int32)
        padded[:len(part)] = part
        logits = model.forward(padded, past + start, rows="all")
        rows.append(logits.numpy()[:len(part)])
        generator.cached_ids.extend(part)
    model.cache.length = past + len(ids)
    return np.concatenate(rows) if rows else np.zeros((0, model.config.vocab), np.float32)
