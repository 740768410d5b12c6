"""Attention in the flash style: online softmax over blocks of keys, no S x T matrix in memory.

`attention(q, k, v)` with q [H, S, D] and k, v [KVH, T, D] serves prefill
(S == T), chunked prefill (S < T, the new queries after T - S cached
tokens) and decode (S == 1): query i sits at position T - S + i.

Grouped-query attention is handled by packing: the H / KVH query heads that
share one K/V head are laid out as rows of one block (row r = query
r // GROUP, head r % GROUP of the group), so K and V are read once per group
and a decode step of Llama-3-8B (GROUP = 4) still gives kl.dot a 4-row
operand instead of four 1-row ones.

Each program owns BM packed rows of one K/V head and walks the keys those
rows can see (causal and sliding-window bounds skip whole blocks), keeping a
running maximum m, a running sum l and the unnormalised output acc per row.
For decode the keys are also split across programs (flash-decoding): each
split writes its (m, l, acc) and a second kernel combines them, so one token
at a long context still occupies every compute unit.
"""
import math

import numpy as np

import kdsl
import kdsl.language as kl

from .configs import tuned
from .elementwise import as_tensor, check_out

# finite start for the running maximum: a row that has seen only masked
# (-inf) scores keeps exp(-inf - start) = 0 weight instead of nan
RUNNING_MAX_START = -1.0e30


@kdsl.jit
def attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, m_ptr, l_ptr, acc_ptr,
                     S, T, window,
                     stride_qh, stride_qs, stride_kh, stride_kt, stride_vh, stride_vt,
                     stride_oh, stride_os, scale,
                     GROUP: kl.constexpr, CAUSAL: kl.constexpr, HAS_WINDOW: kl.constexpr,
                     SPLIT: kl.constexpr, ACC_IN_MEMORY: kl.constexpr, D: kl.constexpr,
                     BM: kl.constexpr, BN: kl.constexpr, BK: kl.constexpr, BD: kl.constexpr):
    """BM packed (query, head) rows of K/V head program_id(1), keys of split program_id(2).

    ACC_IN_MEMORY (for CPUs) keeps the [BM, D] output accumulator in its
    destination (the output, or this split's partial result) instead of in
    registers, updated BK columns at a time: a single work-item then runs
    small register-blocked products whose unrolled code stays short, and the
    accumulator round trip per key block hits the cache.
    """
    kv_head = kl.program_id(1)
    split = kl.program_id(2)
    if CAUSAL:
        # the last query blocks see the most keys: running them first keeps
        # the longest programs out of the launch's tail
        first_row = (kl.num_programs(0) - 1 - kl.program_id(0)) * BM
    else:
        first_row = kl.program_id(0) * BM
    rows = first_row + kl.arange(0, BM)
    query = rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_ok = query < S
    pos = T - S + query
    d = kl.arange(0, BD)
    d_ok = d < D
    part = (split * kl.num_programs(1) * GROUP + head) * S + query
    if SPLIT:
        acc_rows = acc_ptr + part[:, None] * D
    else:
        acc_rows = o_ptr + head[:, None] * stride_oh + query[:, None] * stride_os
    # padding rows and keys past the end read the last real ones (in bounds, no
    # masked loads in the inner loops); the `visible` mask gives them weight 0
    q_rows = q_ptr + head[:, None] * stride_qh + kl.minimum(query, S - 1)[:, None] * stride_qs
    # the keys any row of this block can see, then this split's share of them,
    # worked out here from T so a decode step's launch differs from the last
    # one only in T (the engine replays it); a split may be empty
    keys_per_split = kl.cdiv(kl.cdiv(T, kl.num_programs(2)), BN) * BN
    lo = split * keys_per_split
    hi = min(T, lo + keys_per_split)
    if CAUSAL:
        last_query = min(S - 1, (first_row + BM - 1) // GROUP)
        hi = min(hi, T - S + last_query + 1)
    if HAS_WINDOW:
        lo = max(lo, T - S + first_row // GROUP - window + 1)
    k_base = k_ptr + kv_head * stride_kh
    v_base = v_ptr + kv_head * stride_vh
    running_max = kl.full((BM,), RUNNING_MAX_START, kl.float32)
    running_sum = kl.zeros((BM,), dtype=kl.float32)
    acc = kl.zeros((BM, BD), dtype=kl.float32)
    if ACC_IN_MEMORY:
        for d0 in range(0, D, BK):
            dv = d0 + kl.arange(0, BK)
            kl.store(acc_rows + dv[None, :], kl.zeros((BM, BK), dtype=kl.float32),
                     mask=row_ok[:, None] & (dv[None, :] < D))
    for start in range(lo, hi, BN):
        keys = start + kl.arange(0, BN)
        key_ok = keys < hi
        keys_in = kl.minimum(keys, hi - 1)
        # q k^T over BK-wide slices of the head dimension: each kl.dot is a
        # register-blocked BM x BN x BK product (its code is unrolled, so the
        # slice bounds the kernel's size), q re-read from cache per key block
        scores = kl.zeros((BM, BN), dtype=kl.float32)
        for k0 in range(0, D, BK):
            dk = k0 + kl.arange(0, BK)
            q = kl.load(q_rows + dk[None, :], mask=dk[None, :] < D, other=0.0)
            k_t = kl.load(k_base + keys_in[None, :] * stride_kt + dk[:, None],
                          mask=dk[:, None] < D, other=0.0)
            scores = kl.dot(q, k_t, scores)
        # masks applied one at a time to the scores, so each is computed in
        # the scores' layout (a reassigned mask variable got a layout of its
        # own and crossed to the scores' through local memory on a GPU)
        scores = kl.where(key_ok[None, :] & row_ok[:, None], scores * scale, -float("inf"))
        if CAUSAL:
            scores = kl.where(keys[None, :] <= pos[:, None], scores, -float("inf"))
        if HAS_WINDOW:
            scores = kl.where(keys[None, :] > pos[:, None] - window, scores, -float("inf"))
        new_max = kl.maximum(running_max, kl.max(scores, axis=1))
        p = kl.exp(scores - new_max[:, None])
        alpha = kl.exp(running_max - new_max)
        running_sum = running_sum * alpha + kl.sum(p, axis=1)
        if ACC_IN_MEMORY:
            for d0 in range(0, D, BK):
                dv = d0 + kl.arange(0, BK)
                v = kl.load(v_base + keys_in[:, None] * stride_vt + dv[None, :],
                            mask=dv[None, :] < D, other=0.0)
                mask = row_ok[:, None] & (dv[None, :] < D)
                acc_part = kl.load(acc_rows + dv[None, :], mask=mask, other=0.0)
                kl.store(acc_rows + dv[None, :],
                         kl.dot(p, v, acc_part * alpha[:, None]), mask=mask)
        else:
            v = kl.load(v_base + keys_in[:, None] * stride_vt + d[None, :],
                        mask=d_ok[None, :], other=0.0)
            acc = acc * alpha[:, None] + kl.dot(p, v)
        running_max = new_max
    if SPLIT:
        # partial results [splits, H, S] and [splits, H, S, D], combined by reduce_kernel
        kl.store(m_ptr + part, running_max, mask=row_ok)
        kl.store(l_ptr + part, running_sum, mask=row_ok)
    inv_sum = 1.0 / running_sum
    if ACC_IN_MEMORY:
        if not SPLIT:
            for d0 in range(0, D, BK):
                dv = d0 + kl.arange(0, BK)
                mask = row_ok[:, None] & (dv[None, :] < D)
                acc_part = kl.load(acc_rows + dv[None, :], mask=mask, other=0.0)
                kl.store(acc_rows + dv[None, :], acc_part * inv_sum[:, None], mask=mask)
    elif SPLIT:
        kl.store(acc_rows + d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])
    else:
        kl.store(acc_rows + d[None, :], acc * inv_sum[:, None],
                 mask=row_ok[:, None] & d_ok[None, :])


@kdsl.jit
def reduce_kernel(m_ptr, l_ptr, acc_ptr, o_ptr, S, D, rows_total, splits, stride_oh, stride_os,
                  SPLITS_BLOCK: kl.constexpr, BD: kl.constexpr):
    """Combine the splits' (m, l, acc) of one (head, query) row: weights exp(m_i - max m)."""
    row = kl.program_id(0)
    head = row // S
    query = row % S
    i = kl.arange(0, SPLITS_BLOCK)
    i_ok = i < splits
    m = kl.load(m_ptr + i * rows_total + row, mask=i_ok, other=RUNNING_MAX_START)
    weight = kl.exp(m - kl.max(m, axis=0))
    total = kl.sum(weight * kl.load(l_ptr + i * rows_total + row, mask=i_ok, other=0.0), axis=0)
    d = kl.arange(0, BD)
    d_ok = d < D
    acc = kl.load(acc_ptr + (i[:, None] * rows_total + row) * D + d[None, :],
                  mask=i_ok[:, None] & d_ok[None, :], other=0.0)
    out = kl.sum(acc * weight[:, None], axis=0) / total
    kl.store(o_ptr + head * stride_oh + query * stride_os + d, out, mask=d_ok)


@kdsl.jit
def rows_kernel(q_ptr, k_ptr, v_ptr, o_ptr, m_ptr, l_ptr, acc_ptr, S, T, window,
                stride_qh, stride_qs, stride_kh, stride_kt, stride_vh, stride_vt,
                stride_oh, stride_os, scale,
                GROUP: kl.constexpr, CAUSAL: kl.constexpr, HAS_WINDOW: kl.constexpr,
                SPLIT: kl.constexpr, D: kl.constexpr, BN: kl.constexpr, BD: kl.constexpr):
    """One (head, query) row per program, keys of split program_id(1): the CPU decode form.

    Scores are row sums of a [BN, D] key tile times q (contiguous along D,
    so the back end's vector reductions apply), and the output accumulates
    as a column sum of p times the [BN, D] value tile: no kl.dot, whose
    q k^T operand would be read across keys. Grouped heads each read their
    K/V head (from cache after the first)."""
    row = kl.program_id(0)
    split = kl.program_id(1)
    head = row // S
    query = row % S
    pos = T - S + query
    d = kl.arange(0, BD)
    d_ok = d < D
    q = kl.load(q_ptr + head * stride_qh + query * stride_qs + d, mask=d_ok, other=0.0) * scale
    keys_per_split = kl.cdiv(kl.cdiv(T, kl.num_programs(1)), BN) * BN
    lo = split * keys_per_split
    hi = min(T, lo + keys_per_split)
    if CAUSAL:
        hi = min(hi, pos + 1)
    if HAS_WINDOW:
        lo = max(lo, pos - window + 1)
    k_base = k_ptr + (head // GROUP) * stride_kh
    v_base = v_ptr + (head // GROUP) * stride_vh
    running_max = kl.full((1,), RUNNING_MAX_START, kl.float32)
    running_sum = kl.zeros((1,), dtype=kl.float32)
    acc = kl.zeros((BD,), dtype=kl.float32)
    for start in range(lo, hi, BN):
        keys = start + kl.arange(0, BN)
        keys_in = kl.minimum(keys, hi - 1)          # in bounds; masked to -inf below
        k = kl.load(k_base + keys_in[:, None] * stride_kt + d[None, :], mask=d_ok[None, :],
                    other=0.0)
        scores = kl.where(keys < hi, kl.sum(k * q[None, :], axis=1), -float("inf"))
        new_max = kl.maximum(running_max, kl.max(scores, axis=0))
        p = kl.exp(scores - new_max)
        alpha = kl.exp(running_max - new_max)
        running_sum = running_sum * alpha + kl.sum(p, axis=0)
        v = kl.load(v_base + keys_in[:, None] * stride_vt + d[None, :], mask=d_ok[None, :],
                    other=0.0)
        acc = acc * alpha + kl.sum(p[:, None] * v, axis=0)
        running_max = new_max
    if SPLIT:
        part = split * kl.num_programs(0) + row
        kl.store(m_ptr + part + kl.arange(0, 1), running_max)
        kl.store(l_ptr + part + kl.arange(0, 1), running_sum)
        kl.store(acc_ptr + part * D + d, acc, mask=d_ok)
    else:
        kl.store(o_ptr + head * stride_oh + query * stride_os + d, acc / running_sum, mask=d_ok)


def attention_config(S, T, D, group, kv_heads, device=None):
    """Block sizes and key splits for one call: the tuned config, else these defaults.

    On a CPU (PoCL) every slot of a work-item is unrolled in the generated
    code, so blocks are small (2 x 8, one work-item; a [16, 128] accumulator
    in registers compiled for ten minutes); decode uses rows_kernel without
    grouped heads or while a KV head's K and V fit in cache, else packs a
    group's query rows into one block; prefill with heads of 128 or more
    uses rows_kernel too. A GPU gets 64 work-items (128 with
    64-row blocks for long prefills). Keys are split (flash-decoding) when too few programs
    would otherwise run: about 2 per compute unit on a CPU, 4 on a GPU, with
    at least 256 keys per split so the reduce stays cheap; GPU decode splits
    much finer (16+ keys per split, up to 64 splits).
    """
    device = device or kdsl.current_device()
    bd = 1 << max(D - 1, 0).bit_length()
    rows = 1 << max(S * group - 1, 0).bit_length()
    if device.is_cpu and rows <= 8 and (group == 1 or T * bd <= 1 << 17):
        # decode without grouped heads, or with a KV head's K and V small
        # enough (<= 1 MiB as fp32) that the group's rows re-read them from
        # cache: one work-item per (head, query) row (rows_kernel), 32 keys a
        # step. 8 lost to 16 in the engine's replayed SmolLM2 decode step
        # (24.0 against 26.1 ms at 512 cached tokens); since scores and the
        # p v sums compile to FMAs and exp runs 8-wide, 32 beats 16 (PoCL,
        # caches flushed, interleaved, 2026-12-07: 32 x 4096 x 128 MHA 3.21
        # against 3.72 ms; SmolLM2's 9/3 x 64 at 512 keys 32.0 against 38.3
        # us, at 1024 57.0 against 61.8; the engine's decode step equal,
        # 10.03 against 10.05 ms). SmolLM2's shapes, replayed: 71 against 95
        # us for the packed block at 512 keys, 336 against 377 at 2048, but
        # 397 against 361 at 4096
        cfg = {"form": "rows", "BN": 32, "BD": bd, "num_threads": 1}
    elif device.is_cpu and rows <= 8:
        # decode with grouped heads: the group's query rows packed in one block
        # read each K/V head once; q k^T is the back end's dot along K.
        # PoCL, 32/8 heads x 4096 x 128: 4.9 ms against 6.7 for rows_kernel;
        # 16 keys a step since the float8 arithmetic (codegen, fourteenth
        # session): 0.93-0.96 ms against 1.22-1.26 for 8 and 1.50-1.52 for 32
        # (.scratch/dec_attn_sweep.py, two runs, caches warm)
        cfg = {"BM": rows, "BN": 16, "BK": min(bd, 128), "BD": bd, "num_threads": 1,
               "acc_in_memory": rows * bd > 512}
    elif device.is_cpu and bd >= 128:
        # prefill with heads of 128 or more: one work-item per query row
        # (rows_kernel) as in decode. The 8 x 8 blocks of the time kept such a
        # head's [8, D] accumulator in memory and their [8, 64] operand tiles
        # spilled (45 % of the kernel's samples on stack moves); the row form
        # re-reads K/V from cache per query row instead. PoCL, interleaved,
        # two runs: 1x32x512x128 causal 35.2-45.1 against 48.5-59.5 ms,
        # chunked 32/8 x 128 after 896 32.4-37.0 against 37.8-46.5, 16
        # queries after 1008 5.2 against 6.8, D = 256 4.1 against 4.0 and
        # 9.1 against 11.2; at D = 64 (SmolLM2) it was no faster, so the
        # blocks stay there (.scratch/attn_rows_ab.py, 2026-12-07)
        cfg = {"form": "rows", "BN": 16, "BD": bd, "num_threads": 1}
    elif device.is_cpu:
        # prefill: one work-item per 2 x 8 block (2 packed query rows, 8 keys a
        # step), q k^T as float8 products along D (the back end's dot along
        # K); the [2, D] accumulator stays in registers. SmolLM2's 9/3 heads x
        # 64, 128 queries, causal, PoCL, fresh caches per config, three
        # rounds each: at 576 keys 4.1-4.2 ms against 4.9-5.9 for the 8 x 8
        # blocks before, at 128 keys 0.61-0.67 against 0.74-1.03, at 2048
        # 17.5-20.2 against 23.2-24.4; and 4.8-5.2 s to compile against
        # 41-47 s (the 8 x 8 block's unrolled code spilled: a third of its
        # instructions were stack moves). 1 x 8 was as fast; 4 x 4 and 4 x 8
        # were as fast in some rounds; 8 x 4, 2 x 16 and 4 x 16 slower
        # (.scratch/s20/attn_compile.py, 2026-12-08)
        cfg = {"BM": 2, "BN": 8, "BK": min(bd, 64), "BD": bd, "num_threads": 1,
               "acc_in_memory": bd > 64}
    elif rows >= 1024:
        # H100 sweeps: 128 x 128 blocks over 256 work-items, 2.05 ms at
        # 32 x 2048 x 128 causal against 2.14 for 128 x 64 and 2.08 for
        # 64 x 64 over 128 (.scratch sweep, 2026-11-23, with causal query
        # blocks run longest first); 128 x 64 had beaten 64 x 32 2.45 to 2.62.
        # Since kl.dot reads 4 k-steps per float4 load, q k^T in 32-wide
        # slices: 1.77-1.78 ms against 1.81-1.82 for 16 (2026-12-07)
        cfg = {"BM": 128, "BN": 128, "BK": 32, "BD": bd, "num_threads": 256,
               "acc_in_memory": False}
    elif rows >= 64:
        # H100 sweep: 64 x 32 blocks over 128 work-items beat 32 x 32 over 64
        # by 1.2x at 2048 and 512 queries
        cfg = {"BM": 64, "BN": 32, "BK": 16, "BD": bd, "num_threads": 128,
               "acc_in_memory": False}
    else:
        bm = min(max(rows, 16), 32)
        cfg = {"BM": bm, "BN": 32, "BK": 16, "BD": bd, "num_threads": 64,
               "acc_in_memory": False}
    target_programs = (2 if device.is_cpu else 4) * device.compute_units
    programs = kdsl.cdiv(S * group, cfg.get("BM", 1)) * kv_heads
    cfg["splits"] = max(1, min(kdsl.cdiv(target_programs, programs), T // 256))
    if device.is_gpu and rows <= 8:
        # decode on a GPU: short splits, 16+ keys each, a power of two up to 64
        # (H100 sweep: 57 -> 18 us at 520 keys, 54 -> 23 at 2048, 99 -> 50 at
        # 4096 with GQA 32/8); a power of two so the split count, which a
        # replayed decode step is keyed by, changes at few lengths
        cfg["splits"] = min(64, 1 << max(0, (T // 16).bit_length() - 1))
    key = {"S": S, "T": T, "D": D, "group": group, "kv_heads": kv_heads}
    return tuned("attention", key, cfg, device)


def _launch_config(S, T, D, group, kv_heads, device, config=None):
    """(config without "splits", the number of key splits) of one call."""
    cfg = dict(attention_config(S, T, D, group, kv_heads, device))
    if config and _form(config, cfg.get("form", "blocks")) != cfg.get("form", "blocks"):
        # a config of the other form keeps only what both forms share
        cfg = {"BD": cfg["BD"], "splits": cfg["splits"], "num_threads": cfg["num_threads"]}
    cfg.update(config or {})
    if cfg.get("form", "blocks") == "blocks":
        cfg.setdefault("BK", 16)
        cfg.setdefault("acc_in_memory", False)
    splits = max(1, min(int(cfg.pop("splits")), T))
    # at least a key block per split; a power of two, so the count changes at
    # few lengths (a replayed decode step is recorded anew at each change)
    blocks = kdsl.cdiv(T, cfg["BN"])
    return cfg, min(splits, 1 << (blocks.bit_length() - 1))


def _form(config, default_form):
    """The form a caller's config asks for: its "form", else "blocks" where it
    sets a block-only parameter, else the default's (so {"splits": 2} only
    changes the split count)."""
    if "form" in config:
        return config["form"]
    if any(name in config for name in ("BM", "BK", "acc_in_memory")):
        return "blocks"
    return default_form


def launch_signature(q_shape, k_shape, device=None, config=None):
    """What attention()'s launches for these shapes depend on besides T, S and
    the tensors' offsets: its config and number of key splits.

    Two calls with equal signatures on the same buffers make the same launches
    but for those ints, so a caller can record one and replay it (the engine's
    decode step does).

    >>> launch_signature((9, 1, 64), (3, 300, 64))
    (('BD', 64), ('BK', 64), ('BM', 4), ('BN', 8), ('acc_in_memory', False), ('num_threads', 1), 1)
    """
    H, S, D = q_shape
    KVH, T, _ = k_shape
    cfg, splits = _launch_config(S, T, D, H // KVH, KVH, device or kdsl.current_device(), config)
    return tuple(sorted(cfg.items())) + (splits,)


_scratch = {}       # (context, splits, rows, D) -> the split partials' buffers


def _split_scratch(device, splits, rows_total, D):
    """The partial results of a split launch: the running max, sum and output of
    each split's rows. Kept per shape and reused by later calls, which run after
    this one on the device's in-order queue, so a decode step reads and writes
    the same buffers every time and the engine can replay its launches. Splits
    are only used when few programs run, so each entry stays small (~17 MB at
    most for 128-wide heads on a 132-unit GPU)."""
    key = (id(device.context), splits, rows_total, D)
    if key not in _scratch:
        _scratch[key] = (kdsl.empty((splits, rows_total), np.float32, device=device),
                         kdsl.empty((splits, rows_total), np.float32, device=device),
                         kdsl.empty((splits, rows_total, D), np.float32, device=device))
    return _scratch[key]


def _check(t, name, ndim=3):
    if t.ndim != ndim:
        raise ValueError(f"attention(): {name} must be 3-D [heads, tokens, head_dim], got shape "
                         f"{t.shape}")
    if t.shape[2] > 1 and t.stride(2) != 1:
        raise ValueError(f"attention(): the last dimension of {name} must be contiguous "
                         f"(stride 1), got strides {t.strides}")


def attention(q, k, v, *, causal=True, window=None, scale=None, out=None, config=None):
    """softmax(q k^T * scale + mask) v per head, flash style; returns out [H, S, D] fp32.

    q [H, S, D]; k, v [KVH, T, D] with H % KVH == 0 and T >= S (fp32 or fp16
    storage; strided views such as a KV-cache prefix `k_cache[:, :T]` work).
    Query i sits at position T - S + i. causal=True hides keys after a
    query's position; window=W also hides keys before position - W + 1.
    scale defaults to 1 / sqrt(D). `out` may be any [H, S, D] view, e.g.
    `o.reshape(S, H, D).permute(1, 0, 2)` so the output projection reads [S, H * D].

    >>> o = attention(q, k_cache[:, :p0 + S], v_cache[:, :p0 + S], causal=True)
    """
    q, k, v = (as_tensor(t, "attention", name) for t, name in ((q, "q"), (k, "k"), (v, "v")))
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        _check(t, name)
    H, S, D = q.shape
    KVH, T, Dk = k.shape
    if v.shape != k.shape:
        raise ValueError(f"attention(): k and v shapes differ: {k.shape} and {v.shape}")
    if Dk != D:
        raise ValueError(f"attention(): q has head_dim {D} but k has {Dk}")
    if KVH == 0 or H % KVH:
        raise ValueError(f"attention(): the {H} query heads must be a multiple of the {KVH} "
                         f"key/value heads")
    if T < S:
        raise ValueError(f"attention(): k and v hold {T} tokens, fewer than the {S} queries; "
                         f"they must include the queries' own keys (T >= S)")
    if window is not None and int(window) < 1:
        raise ValueError(f"attention(): window must be a positive number of tokens, got {window}")
    if out is None:
        out = kdsl.empty((H, S, D), np.float32, device=q.device)
    check_out(out, (H, S, D), "attention")
    _check(out, "out")
    if H * S * D == 0:
        return out
    group = H // KVH
    cfg, splits = _launch_config(S, T, D, group, KVH, q.device, config)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    common = dict(GROUP=group, CAUSAL=bool(causal), HAS_WINDOW=window is not None, D=D,
                  BN=cfg["BN"], BD=cfg["BD"], num_threads=cfg["num_threads"], SPLIT=splits > 1)
    strides = (q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
               out.stride(0), out.stride(1))
    window_arg = int(window) if window is not None else 0
    rows_total = H * S
    if splits == 1:
        partials = (out, out, out)           # unused: the kernel writes out directly
    else:
        partials = _split_scratch(q.device, splits, rows_total, D)
    if cfg.get("form") == "rows":
        rows_kernel[(rows_total, splits)](q, k, v, out, *partials, S, T, window_arg,
                                          *strides, scale, **common)
    else:
        grid = (kdsl.cdiv(S * group, cfg["BM"]), KVH, splits)
        attention_kernel[grid](q, k, v, out, *partials, S, T, window_arg, *strides, scale,
                               ACC_IN_MEMORY=bool(cfg["acc_in_memory"]), BM=cfg["BM"],
                               BK=min(cfg["BK"], cfg["BD"]), **common)
    if splits > 1:
        reduce_kernel[(rows_total,)](*partials, out, S, D, rows_total, splits, out.stride(0),
                                     out.stride(1), SPLITS_BLOCK=1 << (splits - 1).bit_length(),
                                     BD=cfg["BD"], num_threads=min(cfg["BD"], 64))
    return out
