"""The KV cache: one preallocated buffer, written in place, read as views.

Layout [layers, 2 (K, V), kv_heads, capacity, head_dim], float32. A step of
S new tokens after P cached ones writes its keys (through RoPE) and values
straight into the slots [:, P:P+S] of its layer, and attention reads the
prefix [:, :P+S] as a view: nothing is ever copied or concatenated.

    >>> cache = KVCache(n_layers=2, n_kv_heads=3, head_dim=64, capacity=128)
    >>> cache.slot(0, "k", past=5, new=2).shape
    (3, 2, 64)
"""
import numpy as np

import kdsl


class KVCache:
    """Keys and values of every layer for up to `capacity` positions."""

    def __init__(self, n_layers, n_kv_heads, head_dim, capacity, device=None):
        self.capacity = capacity
        self.buffer = kdsl.zeros((n_layers, 2, n_kv_heads, capacity, head_dim), np.float32,
                                 device=device)
        self.length = 0          # positions holding valid entries

    @property
    def nbytes(self):
        return self.buffer.nbytes

    def _side(self, layer, which):
        return self.buffer[layer, 0 if which == "k" else 1]

    def slot(self, layer, which, *, past, new):
        """Where a step's new keys or values go: [kv_heads, new, head_dim]."""
        if past + new > self.capacity:
            raise ValueError(f"KV cache: {past} cached + {new} new tokens exceed its capacity "
                             f"of {self.capacity}")
        return self._side(layer, which)[:, past:past + new]

    def prefix(self, layer, which, length):
        """The first `length` positions: what attention reads, [kv_heads, length, head_dim]."""
        return self._side(layer, which)[:, :length]

    def reset(self):
        """Forget every position (the buffer is kept and simply overwritten)."""
        self.length = 0
