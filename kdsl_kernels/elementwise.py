"""Elementwise kernels over strided views: residual add, strided copy, embedding gather.

Every elementwise launch here walks its tensors as at most three dimensions
[A, B, C] with the last one contiguous: dimensions whose strides line up in
every operand are merged first (`collapse`), so a contiguous tensor of any
rank is one long row and a view such as `cache[:, p0:p0 + S]` stays three
dimensions. Programs cover BLOCK elements of the last dimension each, one
element per work-item, the layout that moves the most bytes on PoCL
(docs/performance.md) and is coalesced on a GPU.
"""
import numpy as np

import kdsl
import kdsl.language as kl

from .configs import tuned


def as_tensor(x, fn, name):
    """`x` as a device tensor: a kdsl.Tensor as it is, a numpy array copied to the device."""
    if isinstance(x, kdsl.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return kdsl.tensor(x)
    raise TypeError(f"{fn}(): {name} must be a kdsl.Tensor or numpy array, got "
                    f"{type(x).__name__}")


def new_out(shape, device):
    """A fresh float32 result tensor."""
    return kdsl.empty(shape, np.float32, device=device)


def check_out(out, shape, fn, dtypes=(np.float32,), name="out"):
    """`out` if it is a tensor of `shape` and an allowed dtype, else a ValueError saying why."""
    if not isinstance(out, kdsl.Tensor):
        raise TypeError(f"{fn}(): {name} must be a kdsl.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape) or out.dtype not in [np.dtype(d) for d in dtypes]:
        allowed = " or ".join(str(np.dtype(d)) for d in dtypes)
        raise ValueError(f"{fn}(): {name} must be {allowed} of shape {tuple(shape)}, got "
                         f"{out.dtype} {tuple(out.shape)}")
    return out


@kdsl.jit
def load_block(ptrs, offs, C, EVEN: kl.constexpr):
    """A block of elements offs of a row of C; EVEN (C a multiple of the block):
    no mask. A masked access is a masked vector load or store on a CPU, and
    AMD's masked stores are microcoded: SwiGLU over 512 x 11264 ran 7.0 ms
    masked, 5.9 with only the loads masked and 2.5 unmasked (PoCL, Zen 4)."""
    if EVEN:
        x = kl.load(ptrs)
    else:
        x = kl.load(ptrs, mask=offs < C, other=0.0)
    return x


@kdsl.jit
def store_block(ptrs, value, offs, C, EVEN: kl.constexpr):
    """Store a block loaded by load_block, masked only where not EVEN."""
    if EVEN:
        kl.store(ptrs, value)
    else:
        kl.store(ptrs, value, mask=offs < C)


@kdsl.jit
def add_kernel(a_ptr, b_ptr, out_ptr, B, C, stride_a0, stride_a1, stride_b0, stride_b1,
               stride_o0, stride_o1, BLOCK: kl.constexpr, EVEN: kl.constexpr):
    """out[i, j, k] = a[i, j, k] + b[i, j, k] for one BLOCK of k per program."""
    offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
    j = kl.program_id(1)
    i = kl.program_id(2)
    a = load_block(a_ptr + i * stride_a0 + j * stride_a1 + offs, offs, C, EVEN)
    b = load_block(b_ptr + i * stride_b0 + j * stride_b1 + offs, offs, C, EVEN)
    store_block(out_ptr + i * stride_o0 + j * stride_o1 + offs, a + b, offs, C, EVEN)


@kdsl.jit
def copy_kernel(src_ptr, out_ptr, B, C, stride_s0, stride_s1, stride_o0, stride_o1,
                BLOCK: kl.constexpr, EVEN: kl.constexpr):
    """out[i, j, k] = src[i, j, k], converting to out's dtype (fp32 <-> fp16)."""
    offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
    j = kl.program_id(1)
    i = kl.program_id(2)
    x = load_block(src_ptr + i * stride_s0 + j * stride_s1 + offs, offs, C, EVEN)
    store_block(out_ptr + i * stride_o0 + j * stride_o1 + offs, x, offs, C, EVEN)


@kdsl.jit
def embedding_kernel(ids_ptr, table_ptr, out_ptr, V, D, stride_table, stride_out,
                     BLOCK: kl.constexpr, EVEN: kl.constexpr):
    """out[s] = table[ids[s]]; an id outside [0, V) gives a row of zeros rather
    than a read outside the table (row 0 is read in its place and zeroed, so
    the loads stay unmasked where EVEN: D a multiple of BLOCK). The column
    block is the grid's first axis, so programs that follow each other walk
    one row: rows first, each program opened a new random row and page, and
    PoCL's gather of 512 rows of a 32000 x 4096 table ran 15-20 % slower."""
    offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
    s = kl.program_id(1)
    row = kl.load(ids_ptr + s)
    valid = (row >= 0) & (row < V)
    safe_row = kl.where(valid, row, 0)
    x = load_block(table_ptr + safe_row * stride_table + offs, offs, D, EVEN)
    store_block(out_ptr + s * stride_out + offs, kl.where(valid, x, 0.0), offs, D, EVEN)


def collapse(shape, *strides):
    """Merge dimensions that are contiguous in every operand, then pad to [A, B, C].

    Returns (A, B, C) and, per operand, its strides (s0, s1) of A and B; the
    last dimension must have stride 1 everywhere. Raises ValueError when the
    views cannot be walked that way (a strided last dimension, or more than
    three dimensions left after merging).

    >>> collapse((4, 6, 8), (48, 8, 1), (48, 8, 1))
    ((1, 1, 192), [(0, 0), (0, 0)])
    """
    if not shape:
        return (1, 1, 1), [(0, 0)] * len(strides)
    # extents of 1 carry no stride information: drop them, but keep the last
    # dimension (as contiguous when its extent is 1)
    last = [s[-1] if shape[-1] > 1 else 1 for s in strides]
    dims = [(extent, [s[d] for s in strides]) for d, extent in enumerate(shape[:-1])
            if extent != 1]
    dims.append((shape[-1], last))
    if any(s != 1 for s in last):
        raise ValueError(f"the last dimension must be contiguous (stride 1) in every operand; "
                         f"got strides {[tuple(s) for s in strides]} for shape {tuple(shape)}")
    merged = [dims[-1]]
    for extent, dim_strides in reversed(dims[:-1]):
        inner_extent, inner_strides = merged[0]
        if all(s == i * inner_extent for s, i in zip(dim_strides, inner_strides)):
            merged[0] = (extent * inner_extent, inner_strides)
        else:
            merged.insert(0, (extent, dim_strides))
    if len(merged) > 3:
        raise ValueError(f"views of shape {tuple(shape)} with strides "
                         f"{[tuple(s) for s in strides]} need {len(merged)} dimensions after "
                         f"merging contiguous ones; at most 3 are supported (copy to a "
                         f"contiguous tensor first)")
    while len(merged) < 3:
        merged.insert(0, (1, [0] * len(strides)))
    extents = tuple(extent for extent, _ in merged)
    per_operand = [(merged[0][1][k], merged[1][1][k]) for k in range(len(strides))]
    return extents, per_operand


def dividing_block(C, largest, smallest):
    """The largest power of two up to `largest` that divides C where that is
    `smallest` or more (blocks without masks, load_block), else the power of
    two covering C up to `largest` (its last block masked)."""
    divisor = min(largest, C & -C)             # the largest power of two dividing C
    return divisor if divisor >= smallest else min(largest, 1 << max(C - 1, 0).bit_length())


def elementwise_config(C):
    """Tuned, else one element per work-item in blocks of up to 1024 (the
    fastest layout for memory-bound kernels on PoCL, coalesced on a GPU). On
    a CPU the block divides C where a block of 64 or more does, so no block
    needs masks (load_block): SwiGLU over 512 x 11264 ran 2.5 ms unmasked
    against 7.0 masked in the same layout."""
    block = min(1024, 1 << max(C - 1, 0).bit_length())
    if kdsl.current_device().is_cpu and C % block:
        block = dividing_block(C, 1024, 64)
    return tuned("elementwise", {"C": C}, {"BLOCK": block, "num_threads": block})


def launch_elementwise(kernel, operands, config=None, default_config=None, **constexprs):
    """Launch `kernel(*operands, B, C, <s0, s1 per operand>, BLOCK, EVEN)` over their common shape.

    The layout shared by add, copy, swiglu and gelu_tanh_mul: grid
    (cdiv(C, BLOCK), B, A) after `collapse`. default_config(C) gives the
    config where none is passed (elementwise_config unless said otherwise).
    """
    (A, B, C), strides = collapse(operands[0].shape, *[t.strides for t in operands])
    if A * B * C == 0:
        return
    cfg = config or (default_config or elementwise_config)(C)
    flat_strides = [s for pair in strides for s in pair]
    kernel[(kdsl.cdiv(C, cfg["BLOCK"]), B, A)](*operands, B, C, *flat_strides,
                                               BLOCK=cfg["BLOCK"], EVEN=C % cfg["BLOCK"] == 0,
                                               num_threads=cfg["num_threads"], **constexprs)


def add(a, b, *, out=None, config=None):
    """a + b elementwise (fp32); `out` may be `a` itself (the residual add in place).

    >>> h = add(h, attn_out, out=h)
    """
    a, b = as_tensor(a, "add", "a"), as_tensor(b, "add", "b")
    if a.shape != b.shape:
        raise ValueError(f"add(): shapes differ: {a.shape} and {b.shape}")
    out = new_out(a.shape, a.device) if out is None else check_out(out, a.shape, "add")
    launch_elementwise(add_kernel, [a, b, out], config)
    return out


def copy(src, out, *, config=None):
    """Copy `src` into `out` (same shape, any strides with a contiguous last
    dimension), converting between fp32 and fp16; returns out. Writes V into
    its KV-cache slot:

    >>> copy(v.reshape(S, KVH, D).permute(1, 0, 2), v_cache[:, p0:p0 + S])
    """
    src = as_tensor(src, "copy", "src")
    if not isinstance(out, kdsl.Tensor):
        raise TypeError(f"copy(): out must be a kdsl.Tensor, got {type(out).__name__}")
    if src.shape != out.shape:
        raise ValueError(f"copy(): shapes differ: src {src.shape}, out {out.shape}")
    launch_elementwise(copy_kernel, [src, out], config)
    return out


def embedding(ids, table, *, out=None, config=None):
    """Rows of `table` [V, D] (fp32 or fp16) picked by `ids` [S] (int32) -> [S, D] fp32.

    An id outside [0, V) is an error when `ids` is a numpy array; on a device
    tensor (not read back, to keep the launch asynchronous) it gives zeros.

    >>> x = embedding(np.array([1, 5, 2], np.int32), embed_tokens)
    """
    table = as_tensor(table, "embedding", "table")
    if table.ndim != 2 or table.stride(1) != 1:
        raise ValueError(f"embedding(): table must be 2-D [V, D] with contiguous rows, got shape "
                         f"{table.shape} strides {table.strides}")
    V, D = table.shape
    if isinstance(ids, np.ndarray) or isinstance(ids, (list, tuple)):
        host = np.asarray(ids)
        if host.ndim != 1 or host.dtype.kind not in "iu":
            raise ValueError(f"embedding(): ids must be a 1-D integer array, got {host.dtype} "
                             f"{host.shape}")
        if host.size and (host.min() < 0 or host.max() >= V):
            raise ValueError(f"embedding(): ids must lie in [0, {V}), got values from "
                             f"{host.min()} to {host.max()}")
        ids = kdsl.tensor(host.astype(np.int32), device=table.device)
    ids = as_tensor(ids, "embedding", "ids")
    if ids.ndim != 1 or ids.dtype != np.int32 or ids.stride(0) != 1:
        raise ValueError(f"embedding(): ids must be a contiguous int32 [S] tensor, got "
                         f"{ids.dtype} {ids.shape}")
    S = ids.shape[0]
    out = new_out((S, D), table.device) if out is None else check_out(out, (S, D), "embedding")
    if out.stride(1) != 1:
        raise ValueError(f"embedding(): out must have contiguous rows, got strides {out.strides}")
    if S * D == 0:
        return out
    cfg = config or elementwise_config(D)
    embedding_kernel[(kdsl.cdiv(D, cfg["BLOCK"]), S)](ids, table, out, V, D, table.stride(0),
                                                      out.stride(0), BLOCK=cfg["BLOCK"],
                                                      EVEN=D % cfg["BLOCK"] == 0,
                                                      num_threads=cfg["num_threads"])
    return out
