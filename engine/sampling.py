"""Choosing the next token from logits: greedy, temperature, top-k, top-p, repetition penalty.

Runs on the host: one row of logits (the vocabulary, ~50k floats) per step
is cheap to read back, and numpy's sort is fast enough for it.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature=0 is greedy; top_k=0 and top_p=1 turn those filters off.

    >>> SamplingParams(temperature=0.7, top_k=40, top_p=0.9, seed=1).greedy
    False
    """
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if not (isinstance(self.top_k, (int, np.integer)) and self.top_k >= 0):
            raise ValueError(f"top_k must be an int >= 0 (0 keeps every token), got {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 is none), got "
                             f"{self.repetition_penalty}")

    @property
    def greedy(self):
        return self.temperature == 0


class Sampler:
    """Picks tokens one by one with a private random generator (seeded: reproducible).

    >>> Sampler(SamplingParams()).pick(np.array([0.1, 2.0, -1.0]), history=[])
    1
    """

    def __init__(self, params):
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def pick(self, logits, history):
        """The next token id given one row of logits and the ids seen so far."""
        p = self.params
        logits = np.asarray(logits, dtype=np.float64)
        if p.repetition_penalty != 1.0 and len(history):
            logits = apply_repetition_penalty(logits, history, p.repetition_penalty)
        if p.greedy:
            return int(np.argmax(logits))
        probs = filtered_probabilities(logits / p.temperature, p.top_k, p.top_p)
        return int(self.rng.choice(len(probs), p=probs))


def apply_repetition_penalty(logits, history, penalty):
    """CTRL's penalty, as transformers applies it: seen tokens' positive logits are
    divided by `penalty`, negative ones multiplied.

    >>> apply_repetition_penalty(np.array([2.0, -2.0, 1.0]), [0, 1], 2.0)
    array([ 1., -4.,  1.])
    """
    logits = logits.copy()
    seen = np.unique(np.asarray(history, dtype=np.int64))
    values = logits[seen]
    logits[seen] = np.where(values > 0, values / penalty, values * penalty)
    return logits


def filtered_probabilities(logits, top_k, top_p):
    """Softmax over the top-k tokens, then over the smallest set reaching mass top_p.

    >>> filtered_probabilities(np.log([0.5, 0.3, 0.2]), top_k=0, top_p=0.7).round(3)
    array([0.625, 0.375, 0.   ])
    """
    order = np.argsort(-logits, kind="stable")
    if top_k:
        order = order[:top_k]
    kept = logits[order]
    probs = np.exp(kept - kept[0])
    probs /= probs.sum()
    if top_p < 1.0:
        # keep a token while the mass before it is still short of top_p
        before = np.cumsum(probs) - probs
        count = max(1, int(np.sum(before < top_p)))
        order, probs = order[:count], probs[:count] / probs[:count].sum()
    out = np.zeros(len(logits))
    out[order] = probs
    return out
