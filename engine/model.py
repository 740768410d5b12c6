"""The Llama-family forward pass on the device, from kdsl_kernels calls.

One step takes S new token ids at positions P..P+S-1 and returns logits for R
of its rows. Per layer (as llama2.c reads):

    h = rms_norm(x)                        x is the residual stream
    q, k, v = split(h @ Wqkv.T (+ b))      one fused projection
    q = rope(q);  cache.k[P:P+S] = rope(k);  cache.v[P:P+S] = v
    x += attention(q, cache.k[:P+S], cache.v[:P+S]) @ Wo.T
    h = rms_norm(x)
    x += (silu(h @ Wgate.T) * (h @ Wup.T)) @ Wdown.T

The residual add is fused into the next norm (add_rms_norm). A decode step
with FP4 weights fuses further: the qkv and gate/up GEMVs normalise x
themselves and the o and down GEMVs add into x, six launches per layer
instead of eight (`_fused_decode`); on a GPU the qkv GEMV also applies RoPE
and writes the KV cache, five (`_fused_rope`). Each step's reads and writes are declared
next to its code, so plan.py can share arena memory between buffers that are
never alive together (x, which the fused steps read and write in place of h
and delta, is pinned).
"""
import numpy as np

import kdsl
import kdsl_kernels as kk
from kdsl_kernels import fp4, int8
from kdsl_kernels.attention import launch_signature
from kdsl_kernels.fp4_rope import linear_rope_qkv, rope_fusable
from kdsl_kernels.rope import reserve_positions

from .graph import StepGraph
from .kvcache import KVCache
from .plan import Plan, R, S, Use

# How a step's launches change from one decode step (or prefill chunk) to the
# next (graph.py):
# RoPE's position, the cache slot and attention's key count move by a fixed
# amount per token (in the QKV projection too, where it applies RoPE and
# writes the cache itself); everything else repeats exactly. Attention's config and
# split of the keys change in steps with the length, so its recordings are
# kept per launch signature.
_AFFINE_IN_PAST = frozenset({"qkv", "rope_and_cache", "attention"})


class Model:
    """Weights on the device, the KV cache and the memory plan of one model.

    >>> model = Model(config, weights, context=512, chunk=32)
    >>> logits = model.forward(np.array([1, 2, 3], np.int32), past=0)   # [1, vocab]
    """

    def __init__(self, config, weights, *, context, chunk, device=None, replay=True):
        self.config = config
        self.device = kdsl.device.as_device(device)
        self.chunk = chunk
        # decode steps and prefill chunks replay prepared launches (graph.py);
        # replay=False runs every wrapper
        self.graph = StepGraph() if replay else None
        # Norms and residual adds inside the FP4 GEMVs of a decode step (183
        # launches instead of 243 for SmolLM2). On a GPU a step is bound by its
        # launches (H100: 4.59 against 5.40 ms). On PoCL it once cost more than it
        # saved (24.2 against 22.2 ms), when each program normalised x for 4 rows;
        # with 8-row programs on the row-tiled layout it is 2-4 % faster (two
        # engines in one process, blocks of 16 replayed steps alternated, two
        # runs: medians 12.61 against 13.14 and 11.82 against 12.11 ms,
        # .scratch/fuse_cpu_ab2.py, 2026-12-07).
        self.fuse_decode = True
        # ...and RoPE with the K/V cache write inside the QKV GEMV (fp4_rope.py):
        # one launch fewer per layer, for GPUs, where a decode step is bound by
        # its launches. On PoCL it was no faster (153 against 183 launches; blocks
        # of 24 replayed steps alternated 12 times: medians 10.84 against 10.68
        # ms, .scratch/rope_fuse_ab.py, 2026-12-07): its programs read two row
        # streams of the tiled layout, and the launches it saves cost little there
        self.fuse_rope = self.device.is_gpu
        self.ids = kdsl.empty((chunk,), np.int32, device=self.device)
        self.weights = {name: _upload(value, self.device) for name, value in weights.items()
                        if not name.startswith("lm_head.")}
        if "lm_head.codes" in weights:
            self.lm_head = int8.Int8Weight(weights["lm_head.codes"], weights["lm_head.scales"])
            self.lm_head.upload(self.device)
        else:
            self.lm_head = self.weights.get("lm_head", self.weights["embed"])
        self.cache = KVCache(config.n_layers, config.n_kv_heads, config.head_dim, context,
                             device=self.device)
        # RoPE's cos/sin tables for the whole context now: a replayed step keeps
        # the tables it was recorded with, and a table regrown later would not be them
        reserve_positions(context, config.rope_base, rotary_dim=config.head_dim,
                          device=self.device)
        cfg = config
        self._layer_steps = [
            (Use("attn_norm", ["delta", "x"], ["x", "h"]), self._attn_norm),
            # q too: the fused decode GEMV writes it (with RoPE) itself
            (Use("qkv", ["h"], ["qkv", "q"]), self._qkv),
            (Use("rope_and_cache", ["qkv"], ["q"]), self._rope_and_cache),
            (Use("attention", ["q"], ["attn"]), self._attention),
            (Use("o_proj", ["attn"], ["delta"]), self._o_proj),
            (Use("ffn_norm", ["delta", "x"], ["x", "h"]), self._ffn_norm),
            (Use("gate_up", ["h"], ["gate_up"]), self._gate_up),
            (Use("swiglu", ["gate_up"], ["act"]), self._swiglu),
            (Use("down", ["act"], ["delta"]), self._down),
        ]
        buffers = {
            "x": (S, cfg.hidden), "h": (S, cfg.hidden), "delta": (S, cfg.hidden),
            "qkv": (S, cfg.q_size + 2 * cfg.kv_size), "q": (cfg.n_heads, S, cfg.head_dim),
            "attn": (S, cfg.q_size), "gate_up": (S, 2 * cfg.ffn), "act": (S, cfg.ffn),
            "logits": (R, cfg.vocab),
        }
        uses = ([Use("embed", [], ["x"])] + [use for use, _ in self._layer_steps]
                + [Use("final_norm", ["delta", "x"], ["h"]), Use("lm_head", ["h"], ["logits"])])
        self.plan = Plan(buffers, uses, max_tokens=chunk, pinned=["x"], device=self.device)

    # ------------------------------------------------------------ one step
    def forward(self, ids, past, *, rows="last", last=None):
        """Run S = len(ids) tokens after `past` cached ones; returns logits [R, vocab].

        rows="last": the logits of row `last` (default S-1) only, R = 1;
        rows="all": every row's, R = S. The step's K/V land in the cache at
        positions past..past+S-1; `cache.length` becomes past + S. ids=None:
        one token whose id is already on the device (`greedy_next` put it there).
        """
        n = 1 if ids is None else len(ids)
        if past + n > self.cache.capacity:
            raise ValueError(f"{past + n} positions exceed the context of {self.cache.capacity}")
        last = n - 1 if last is None else last
        r = n if rows == "all" else 1
        v = self.plan.views(S=n, R=r)
        if ids is not None:
            self.ids[:n].copy_from(np.asarray(ids, dtype=np.int32))
        self._past, self._n = past, n
        first = 0 if rows == "all" else last
        # A step of n tokens that returns one row's logits (a decode step, a
        # prefill chunk) makes the same launches every time but for the past
        # length: replayed, keyed by (n, last)
        graph = self.graph if r == 1 else None
        shape = (n, last)
        run = ((lambda key, step: graph.run(shape + key, step)) if graph is not None
               else (lambda key, step: step()))
        if graph is None:
            self._layers(v, run, None, None, shape, past, n, first, r)
        else:
            cfg = self.config
            signature = launch_signature((cfg.n_heads, n, cfg.head_dim),
                                         (cfg.n_kv_heads, past + n, cfg.head_dim), self.device)
            if not graph.replay(shape + (signature,), past):
                with graph.trace(shape + (signature,)):
                    self._layers(v, run, graph, signature, shape, past, n, first, r)
        self.cache.length = past + n
        self._logits = v["logits"]
        return v["logits"]

    def greedy_next(self):
        """Queue the argmax of the last step's (last row's) logits into the input
        ids, so forward(None, ...) can run the next step without the host
        knowing the token; returns a PendingRead of that token id (an int32 [1]).

        >>> model.forward(np.array([token], np.int32), past)
        >>> pending = model.greedy_next()
        >>> model.forward(None, past + 1)            # queued before the token is known
        >>> token = int(pending.wait()[0])
        """
        logits, ids = self._logits[-1:], self.ids[:1]
        if self.graph is None:
            kk.argmax(logits, out=ids)
        else:
            self.graph.run(("greedy_next", logits.offset), lambda: kk.argmax(logits, out=ids))
        return ids.read_async()

    def _layers(self, v, run, graph, signature, shape, past, n, first, r):
        """The step's sub-steps in order: embedding, every layer, final norm, LM
        head; through `graph` (sub-steps recorded and replayed) where not None."""
        run(("embed",), lambda: kk.embedding(self.ids[:n], self.weights["embed"], out=v["x"]))
        for layer in range(self.config.n_layers):
            self._layer = layer
            for use, step in self._layer_steps:
                if graph is None:
                    step(v)
                elif use.name in _AFFINE_IN_PAST:
                    key = shape + (layer, use.name) + ((signature,) if use.name == "attention"
                                                       else ())
                    graph.run_affine(key, lambda: step(v), past, unit=n)
                else:
                    run((layer, use.name), lambda: step(v))
        run(("final_norm",), lambda: self._final_norm(v))
        run(("lm_head",), lambda: self._linear(v["h"][first:first + r], self.lm_head, None,
                                               v["logits"]))

    # ------------------------------------------------------------ the layer's steps
    def _w(self, name):
        return self.weights.get(f"layers.{self._layer}.{name}")

    def _fused_decode(self):
        """A decode step whose projections are all FP4: the GEMVs take the norms
        and residual adds (fp4.linear's rms_norm= and accumulate=)."""
        return (self.fuse_decode and self._n == 1
                and all(isinstance(self._w(name), fp4.PackedWeight)
                        for name in ("wqkv", "wo", "w_gate_up", "w_down")))

    def _fused_rope(self):
        """A fused decode step whose QKV GEMV also applies RoPE and writes the cache."""
        return (self.fuse_rope and self._fused_decode()
                and rope_fusable(self._w("wqkv"), self.config.head_dim, self.device))

    def _final_norm(self, v):
        self._layer = self.config.n_layers - 1    # whose weights _fused_decode checks
        if self._fused_decode():       # the last down GEMV already added into x
            kk.rms_norm(v["x"], self.weights["norm"], self.config.rms_eps, out=v["h"])
        else:
            kk.add_rms_norm(v["delta"], v["x"], self.weights["norm"], self.config.rms_eps,
                            out=v["h"])

    def _attn_norm(self, v):
        eps = self.config.rms_eps
        if self._fused_decode():
            return                    # done by _qkv's GEMV
        if self._layer == 0:
            kk.rms_norm(v["x"], self._w("attn_norm"), eps, out=v["h"])
        else:
            kk.add_rms_norm(v["delta"], v["x"], self._w("attn_norm"), eps, out=v["h"])

    def _qkv(self, v):
        cfg, layer, past = self.config, self._layer, self._past
        if self._fused_rope():
            linear_rope_qkv(v["x"], self._w("wqkv"), n_heads=cfg.n_heads,
                            n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, position=past,
                            base=cfg.rope_base, q_out=v["q"],
                            k_out=self.cache.slot(layer, "k", past=past, new=1),
                            v_out=self.cache.slot(layer, "v", past=past, new=1),
                            bias=self._w("bqkv"), rms_norm=(self._w("attn_norm"), cfg.rms_eps))
        elif self._fused_decode():
            fp4.linear(v["x"], self._w("wqkv"), bias=self._w("bqkv"), out=v["qkv"],
                       rms_norm=(self._w("attn_norm"), self.config.rms_eps))
        else:
            self._linear(v["h"], self._w("wqkv"), self._w("bqkv"), v["qkv"])

    def _rope_and_cache(self, v):
        if self._fused_rope():
            return                    # done by _qkv's GEMV
        cfg, layer, past, n = self.config, self._layer, self._past, self._n
        q, k, val = self._split_heads(v["qkv"])
        kk.rope_qkv(q, k, val, past, cfg.rope_base, q_out=v["q"],
                    k_out=self.cache.slot(layer, "k", past=past, new=n),
                    v_out=self.cache.slot(layer, "v", past=past, new=n))

    def _attention(self, v):
        cfg, layer, length = self.config, self._layer, self._past + self._n
        out = v["attn"].reshape(self._n, cfg.n_heads, cfg.head_dim).permute(1, 0, 2)
        kk.attention(v["q"], self.cache.prefix(layer, "k", length),
                     self.cache.prefix(layer, "v", length), causal=True,
                     window=cfg.sliding_window, out=out)

    def _o_proj(self, v):
        if self._fused_decode():
            fp4.linear(v["attn"], self._w("wo"), bias=self._w("bo"), out=v["x"],
                       accumulate=True)
        else:
            self._linear(v["attn"], self._w("wo"), self._w("bo"), v["delta"])

    def _ffn_norm(self, v):
        if self._fused_decode():
            return                    # done by _gate_up's GEMV
        kk.add_rms_norm(v["delta"], v["x"], self._w("ffn_norm"), self.config.rms_eps,
                        out=v["h"])

    def _gate_up(self, v):
        if self._fused_decode():
            # the FP4 GEMV normalises x and applies SwiGLU itself
            fp4.linear(v["x"], self._w("w_gate_up"), out=v["act"], activation="swiglu",
                       rms_norm=(self._w("ffn_norm"), self.config.rms_eps))
        elif self._gated_gemv():
            # decode: the FP4 GEMV applies SwiGLU itself, one launch fewer per layer
            fp4.linear(v["h"], self._w("w_gate_up"), out=v["act"], activation="swiglu")
        else:
            self._linear(v["h"], self._w("w_gate_up"), None, v["gate_up"])

    def _swiglu(self, v):
        if self._gated_gemv():
            return                    # done by _gate_up's GEMV
        ffn = self.config.ffn
        gate_up = v["gate_up"]
        kk.swiglu(gate_up[:, :ffn], gate_up[:, ffn:], out=v["act"])

    def _gated_gemv(self):
        return self._n == 1 and isinstance(self._w("w_gate_up"), fp4.PackedWeight)

    def _down(self, v):
        if self._fused_decode():
            fp4.linear(v["act"], self._w("w_down"), out=v["x"], accumulate=True)
        else:
            self._linear(v["act"], self._w("w_down"), None, v["delta"])

    # ------------------------------------------------------------ helpers
    def _split_heads(self, qkv):
        """Q, K, V of the fused projection as [heads, S, head_dim] views (no copy)."""
        cfg, n = self.config, self._n
        width, d = qkv.shape[1], cfg.head_dim

        def heads(start, count):
            return kdsl.Tensor(qkv.buffer, (count, n, d), qkv.dtype, qkv.device,
                               qkv.offset + start, (d, width, 1))
        return (heads(0, cfg.n_heads), heads(cfg.q_size, cfg.n_kv_heads),
                heads(cfg.q_size + cfg.kv_size, cfg.n_kv_heads))

    @staticmethod
    def _linear(x, w, bias, out):
        if isinstance(w, fp4.PackedWeight):
            return fp4.linear(x, w, bias=bias, out=out)
        if isinstance(w, int8.Int8Weight):
            return int8.linear(x, w, out=out)
        return kk.matmul(x, w, trans_b=True, bias=bias, out=out)


def _upload(value, device):
    if isinstance(value, fp4.PackedWeight):
        value.upload(device)                 # once, now, rather than at the first step
        return value
    return kdsl.tensor(np.ascontiguousarray(value), device=device)
