"""Rotary position embedding (RoPE), written straight into its destination.

`rope(x, positions, base)` rotates pairs of dimensions of x [H, S, D] by
angle position * inv_freq[i], inv_freq[i] = base^(-2i / rotary_dim), in
Hugging Face Llama's rotate-half layout (pair (i, i + rotary_dim/2)) or in
the interleaved layout (pair (2i, 2i + 1)). Dimensions past rotary_dim are
copied unchanged. `out` may be any [H, S, D] view, for instance the slot of
the K cache the new keys belong in, so RoPE and the cache write are one pass.

inv_freq is computed on the host in float32 exactly as transformers does
(then angle = float32(position) * inv_freq and cos/sin in float32 on the
device, as there), so results match the reference to float rounding even at
positions in the thousands. Models with scaled RoPE (Llama 3's "llama3",
linear, dynamic NTK) pass their own inv_freq.
"""
import numpy as np

import kdsl
import kdsl.language as kl

from .elementwise import as_tensor, check_out


@kdsl.jit
def rotate_rows(x_rows, out_rows, cos, sin, mask, token_ok, n_pairs, D,
                INTERLEAVED: kl.constexpr, HALF_BLOCK: kl.constexpr, PASS_BLOCK: kl.constexpr,
                EVEN: kl.constexpr):
    """Rotate the pairs of BS rows (x_rows, out_rows: pointers to each row's
    start) by the [BS, HALF_BLOCK] angles' cos and sin; copy dims past the
    rotary ones when PASS_BLOCK > 0. EVEN: every token and pair of the block
    is live, so no access is masked (masked vector stores are microcoded on
    AMD CPUs; see elementwise.load_block)."""
    i = kl.arange(0, HALF_BLOCK)
    if INTERLEAVED:
        first = 2 * i
        second = 2 * i + 1
    else:
        first = i
        second = i + n_pairs
    if EVEN:
        x1 = kl.load(x_rows + first[None, :])
        x2 = kl.load(x_rows + second[None, :])
        kl.store(out_rows + first[None, :], x1 * cos - x2 * sin)
        kl.store(out_rows + second[None, :], x2 * cos + x1 * sin)
    else:
        x1 = kl.load(x_rows + first[None, :], mask=mask, other=0.0)
        x2 = kl.load(x_rows + second[None, :], mask=mask, other=0.0)
        kl.store(out_rows + first[None, :], x1 * cos - x2 * sin, mask=mask)
        kl.store(out_rows + second[None, :], x2 * cos + x1 * sin, mask=mask)
    if PASS_BLOCK > 0:
        for start in range(2 * n_pairs, D, PASS_BLOCK):
            cols = start + kl.arange(0, PASS_BLOCK)
            keep = token_ok[:, None] & (cols[None, :] < D)
            kl.store(out_rows + cols[None, :], kl.load(x_rows + cols[None, :], mask=keep,
                                                       other=0.0), mask=keep)


@kdsl.jit
def angles(tokens, token_ok, pos_ptr, inv_freq_ptr, cos_ptr, sin_ptr, p0, n_pairs,
           POS_FROM_PTR: kl.constexpr, FROM_TABLE: kl.constexpr, HALF_BLOCK: kl.constexpr,
           EVEN: kl.constexpr):
    """(cos, sin, mask) of BS tokens' angles, [BS, HALF_BLOCK]: from the host-made
    tables, or computed from inv_freq (sin and cos of angles in the thousands
    cost more than the kernel's memory traffic, hence the tables). EVEN as in
    rotate_rows."""
    i = kl.arange(0, HALF_BLOCK)
    pair_ok = i < n_pairs
    mask = token_ok[:, None] & pair_ok[None, :]
    # positions per (token, pair): all pairs of a token read one address (or
    # take p0 + token), so they arrive in the angles' [BS, HALF_BLOCK] layout.
    # A [BS] position went to that layout through local memory, and PoCL 3.1
    # mis-masked the stores after that barrier inside rope_qkv_kernel's branch
    # on the head: rows past S written, heap corrupted
    # (tests/test_kernels_rope.py, S = 5, D = 64, rotary_dim = 32).
    token_2d = tokens[:, None] + 0 * i[None, :]
    if POS_FROM_PTR and EVEN:
        pos = kl.load(pos_ptr + token_2d)
    elif POS_FROM_PTR:
        pos = kl.load(pos_ptr + token_2d, mask=mask, other=0)
    else:
        pos = p0 + token_2d
    if FROM_TABLE and EVEN:
        cos = kl.load(cos_ptr + pos * n_pairs + i[None, :])
        sin = kl.load(sin_ptr + pos * n_pairs + i[None, :])
    elif FROM_TABLE:
        cos = kl.load(cos_ptr + pos * n_pairs + i[None, :], mask=mask, other=0.0)
        sin = kl.load(sin_ptr + pos * n_pairs + i[None, :], mask=mask, other=0.0)
    else:
        if EVEN:
            freqs = kl.load(inv_freq_ptr + i)
        else:
            freqs = kl.load(inv_freq_ptr + i, mask=pair_ok, other=0.0)
        angle = pos.to(kl.float32) * freqs[None, :]
        cos = kl.cos(angle)
        sin = kl.sin(angle)
    return cos, sin, mask


@kdsl.jit
def rope_kernel(x_ptr, pos_ptr, inv_freq_ptr, cos_ptr, sin_ptr, out_ptr, p0, n_pairs, S, D,
                stride_xh, stride_xs, stride_oh, stride_os,
                POS_FROM_PTR: kl.constexpr, FROM_TABLE: kl.constexpr, INTERLEAVED: kl.constexpr,
                BS: kl.constexpr, HALF_BLOCK: kl.constexpr, PASS_BLOCK: kl.constexpr,
                EVEN: kl.constexpr):
    """BS tokens x `n_pairs` rotated pairs of one head per program; the rest of
    each row (rotary_dim..D) is copied when PASS_BLOCK > 0. EVEN: BS divides S
    and n_pairs is HALF_BLOCK (no masks)."""
    tokens = kl.program_id(0) * BS + kl.arange(0, BS)
    h = kl.program_id(1)
    token_ok = tokens < S
    cos, sin, mask = angles(tokens, token_ok, pos_ptr, inv_freq_ptr, cos_ptr, sin_ptr, p0,
                            n_pairs, POS_FROM_PTR, FROM_TABLE, HALF_BLOCK, EVEN)
    rotate_rows(x_ptr + h * stride_xh + tokens[:, None] * stride_xs,
                out_ptr + h * stride_oh + tokens[:, None] * stride_os,
                cos, sin, mask, token_ok, n_pairs, D, INTERLEAVED, HALF_BLOCK, PASS_BLOCK, EVEN)


@kdsl.jit
def rope_qkv_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, inv_freq_ptr, cos_ptr, sin_ptr,
                    q_out_ptr, k_out_ptr, v_out_ptr, p0, n_pairs, S, D, H, KVH,
                    stride_qh, stride_qs, stride_kh, stride_ks, stride_vh, stride_vs,
                    stride_qoh, stride_qos, stride_koh, stride_kos, stride_voh, stride_vos,
                    POS_FROM_PTR: kl.constexpr, FROM_TABLE: kl.constexpr,
                    INTERLEAVED: kl.constexpr, BS: kl.constexpr, HALF_BLOCK: kl.constexpr,
                    PASS_BLOCK: kl.constexpr, D_BLOCK: kl.constexpr, EVEN: kl.constexpr):
    """One launch for a layer's new tokens: heads 0..H-1 of program axis 1
    rotate q into q_out, the next KVH rotate k into k_out (the K cache slot),
    the last KVH copy v into v_out (the V cache slot). EVEN as in rope_kernel,
    and D is D_BLOCK."""
    tokens = kl.program_id(0) * BS + kl.arange(0, BS)
    h = kl.program_id(1)
    token_ok = tokens < S
    if h < H + KVH:
        cos, sin, mask = angles(tokens, token_ok, pos_ptr, inv_freq_ptr, cos_ptr, sin_ptr, p0,
                                n_pairs, POS_FROM_PTR, FROM_TABLE, HALF_BLOCK, EVEN)
        if h < H:
            rotate_rows(q_ptr + h * stride_qh + tokens[:, None] * stride_qs,
                        q_out_ptr + h * stride_qoh + tokens[:, None] * stride_qos,
                        cos, sin, mask, token_ok, n_pairs, D, INTERLEAVED, HALF_BLOCK,
                        PASS_BLOCK, EVEN)
        else:
            rotate_rows(k_ptr + (h - H) * stride_kh + tokens[:, None] * stride_ks,
                        k_out_ptr + (h - H) * stride_koh + tokens[:, None] * stride_kos,
                        cos, sin, mask, token_ok, n_pairs, D, INTERLEAVED, HALF_BLOCK,
                        PASS_BLOCK, EVEN)
    else:
        cols = kl.arange(0, D_BLOCK)
        keep = token_ok[:, None] & (cols[None, :] < D)
        hv = h - H - KVH
        v_rows = v_ptr + hv * stride_vh + tokens[:, None] * stride_vs + cols[None, :]
        v_out_rows = v_out_ptr + hv * stride_voh + tokens[:, None] * stride_vos + cols[None, :]
        if EVEN:
            kl.store(v_out_rows, kl.load(v_rows))
        else:
            kl.store(v_out_rows, kl.load(v_rows, mask=keep, other=0.0), mask=keep)


_inv_freq_cache = {}
_tables = {}


def inv_freq(base, rotary_dim):
    """float32 inv_freq[i] = 1 / base^(2i / rotary_dim), computed as transformers does.

    >>> inv_freq(10000.0, 4)
    array([1.  , 0.01], dtype=float32)
    """
    exponent = np.arange(0, rotary_dim, 2).astype(np.float32) / np.float32(rotary_dim)
    return (np.float32(1.0) / (np.float32(base) ** exponent)).astype(np.float32)


_default_inv_freq = inv_freq     # rope()'s inv_freq argument hides the name there


def _device_inv_freq(base, rotary_dim, device, given):
    if given is not None:
        given = as_tensor(np.asarray(given, np.float32) if not isinstance(given, kdsl.Tensor)
                          else given, "rope", "inv_freq")
        if given.shape != (rotary_dim // 2,) or given.dtype != np.float32:
            raise ValueError(f"rope(): inv_freq must be float32 of shape ({rotary_dim // 2},), "
                             f"got {given.dtype} {given.shape}")
        return given
    key = (device.fingerprint, float(base), rotary_dim)
    if key not in _inv_freq_cache:
        _inv_freq_cache[key] = kdsl.tensor(inv_freq(base, rotary_dim), device=device)
    return _inv_freq_cache[key]


def reserve_positions(positions, base=10000.0, *, rotary_dim, device=None):
    """Size the cos/sin tables that rope() and rope_qkv() read (default inv_freq
    of `base`) for positions below `positions` now, so they are not regrown later.

    A caller that records launches and replays them (engine/graph.py) holds the
    table a launch was recorded with; a table regrown for a later position is a
    new buffer the recording never sees, and positions past the old one would
    read beyond it. The engine reserves its context when a model loads.

    >>> reserve_positions(4096, 1e4, rotary_dim=128)
    """
    cos_sin_tables(base, rotary_dim, positions, device)


def cos_sin_tables(base, rotary_dim, positions, device=None):
    """The device tables (cos, sin), each float32 [P, rotary_dim / 2] with P >=
    positions, of angle p * inv_freq[i] (default inv_freq of `base`) that rope()
    reads: for kernels that rotate by RoPE themselves (fp4_rope.py)."""
    device = device or kdsl.current_device()
    return _cos_sin_tables(_default_inv_freq(base, rotary_dim), positions, device)


def _cos_sin_tables(freqs, positions_needed, device):
    """Device tables cos, sin [P, n_pairs] of float32(p) * freqs for p < P >= positions_needed,
    computed on the host as transformers computes them, kept per (device, freqs) and grown to
    the next power of two when a later position needs more (see reserve_positions)."""
    key = (device.fingerprint, freqs.tobytes())
    have = _tables.get(key)
    if have is None or have[0].shape[0] < positions_needed:
        count = 1 << max(positions_needed - 1, 255).bit_length()
        angle = np.arange(count, dtype=np.float32)[:, None] * freqs[None, :]
        have = (kdsl.tensor(np.cos(angle), device=device),
                kdsl.tensor(np.sin(angle), device=device))
        _tables[key] = have
    return have


def _check_view(t, name):
    if t.ndim != 3:
        raise ValueError(f"rope(): {name} must be 3-D [H, S, D], got shape {t.shape}")
    if t.shape[2] > 1 and t.stride(2) != 1:
        raise ValueError(f"rope(): the last dimension of {name} must be contiguous (stride 1), "
                         f"got strides {t.strides}")


def rope(x, positions, base=10000.0, *, rotary_dim=None, interleaved=False, inv_freq=None,
         out=None, config=None):
    """Apply RoPE to x [H, S, D] (any strides, last one 1); returns `out` (default: new fp32).

    positions: an int p0 (tokens at p0 .. p0 + S - 1) or int32 [S] (numpy or
    device). rotary_dim (default D, even) rotates only the first rotary_dim
    dimensions. inv_freq ([rotary_dim / 2] float32) overrides base for
    scaled RoPE variants. `out` may be x itself or a KV-cache slot (fp32 or fp16).

    >>> k_cache_slot = k_cache[:, p0:p0 + S]
    >>> rope(k.reshape(S, KVH, D).permute(1, 0, 2), p0, 500000.0, out=k_cache_slot)
    """
    x = as_tensor(x, "rope", "x")
    _check_view(x, "x")
    H, S, D = x.shape
    if out is None:
        out = kdsl.empty(x.shape, np.float32, device=x.device)
    check_out(out, x.shape, "rope", (np.float32, np.float16))
    _check_view(out, "out")
    args, consts = _angle_args("rope", x, positions, base, rotary_dim, inv_freq)
    if H * S * D == 0:
        return out
    cfg = config or {}
    tokens = cfg.get("BS", _tokens_per_program(S, consts["HALF_BLOCK"], x.device))
    rope_kernel[(kdsl.cdiv(S, tokens), H)](
        x, *args[:4], out, *args[4:], S, D, x.stride(0), x.stride(1), out.stride(0),
        out.stride(1), INTERLEAVED=bool(interleaved), BS=tokens, **consts,
        EVEN=_even(S, tokens, args[5], consts["HALF_BLOCK"]),
        num_threads=cfg.get("num_threads", min(tokens * consts["HALF_BLOCK"], 64)))
    return out


def rope_qkv(q, k, v, positions, base=10000.0, *, q_out, k_out, v_out, rotary_dim=None,
             interleaved=False, inv_freq=None):
    """RoPE on q and k and a copy of v, in one launch: a layer's new tokens into
    the attention input and the KV cache. Returns (q_out, k_out, v_out).

    q [H, S, D], k and v [KVH, S, D] (typically views of one fused QKV
    projection), outputs of the same shapes (fp32 or fp16; typically the K
    and V cache slots of positions p0..p0+S-1). Arguments as in rope().
    Same result as rope(q, ...), rope(k, ...) and copy(v, v_out), with two
    launches fewer: a decode step's launch count is what a GPU waits on.

    >>> rope_qkv(q, k, v, p0, 1e5, q_out=q_rot, k_out=k_cache[:, p0:p0 + S],
    ...          v_out=v_cache[:, p0:p0 + S])
    """
    q, k, v = (as_tensor(t, "rope_qkv", n) for t, n in ((q, "q"), (k, "k"), (v, "v")))
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        _check_view(t, name)
    H, S, D = q.shape
    if k.shape != v.shape or k.shape[1:] != (S, D):
        raise ValueError(f"rope_qkv(): k and v must both be [KVH, {S}, {D}] like q's last two "
                         f"dimensions, got k {k.shape} and v {v.shape}")
    KVH = k.shape[0]
    for t, o, name in ((q, q_out, "q_out"), (k, k_out, "k_out"), (v, v_out, "v_out")):
        check_out(o, t.shape, "rope_qkv", (np.float32, np.float16), name)
        _check_view(o, name)
    args, consts = _angle_args("rope_qkv", q, positions, base, rotary_dim, inv_freq)
    if S * D == 0 or H + KVH == 0:
        return q_out, k_out, v_out
    d_block = 1 << max(D - 1, 0).bit_length()
    tokens = _tokens_per_program(S, max(consts["HALF_BLOCK"], d_block // 2), q.device)
    strides = [t.stride(i) for t in (q, k, v, q_out, k_out, v_out) for i in (0, 1)]
    rope_qkv_kernel[(kdsl.cdiv(S, tokens), H + 2 * KVH)](
        q, k, v, *args[:4], q_out, k_out, v_out, *args[4:], S, D, H, KVH, *strides,
        INTERLEAVED=bool(interleaved), BS=tokens, D_BLOCK=d_block, **consts,
        EVEN=_even(S, tokens, args[5], consts["HALF_BLOCK"]) and D == d_block,
        num_threads=min(tokens * consts["HALF_BLOCK"], 64))
    return q_out, k_out, v_out


def _even(S, tokens, n_pairs, half_block):
    """Whether a launch's blocks are all live: no masked loads or stores."""
    return S % tokens == 0 and n_pairs == half_block


def _tokens_per_program(S, half_block, device):
    """A few tokens per program, so short rows do not each pay a work-group's
    start-up: 512 pairs on a GPU; 128 on a CPU, where the 64 work-items then
    take 2 pairs each (PoCL, 32 heads x 512 x 128 into a cache slot, medians
    of 4 alternations: 2 tokens 0.64 ms, 4 0.75, 8 0.83; SmolLM2's 9 x 128 x
    64: 4 tokens 0.085, 8 0.082, 2 0.135)."""
    pairs = 128 if device.is_cpu else 512
    return min(1 << max(S - 1, 0).bit_length(), max(1, pairs // half_block))


def _angle_args(caller, x, positions, base, rotary_dim, inv_freq):
    """The kernels' angle arguments for x [H, S, D]: ([pos, inv_freq, cos, sin,
    p0, n_pairs], constexprs), checking positions, rotary_dim and inv_freq."""
    H, S, D = x.shape
    rotary_dim = D if rotary_dim is None else int(rotary_dim)
    if rotary_dim % 2 or not 0 < rotary_dim <= D:
        raise ValueError(f"{caller}(): rotary_dim must be even and in (0, {D}], got "
                         f"{rotary_dim}")
    last_position = None                 # the largest position, where known without a sync
    if isinstance(positions, (int, np.integer)):
        p0, pos, from_ptr = int(positions), None, False
        if p0 < 0:
            raise ValueError(f"{caller}(): positions must be >= 0, got {p0}")
        last_position = p0 + S - 1
    else:
        if not isinstance(positions, kdsl.Tensor):
            positions = np.asarray(positions)
            if positions.dtype.kind not in "iu":
                raise ValueError(f"{caller}(): positions must be integers, got "
                                 f"{positions.dtype}")
            if positions.size and positions.min() < 0:
                raise ValueError(f"{caller}(): positions must be >= 0, got {positions.min()}")
            last_position = int(positions.max()) if positions.size else 0
            positions = kdsl.tensor(positions.astype(np.int32), device=x.device)
        if positions.shape != (S,) or positions.dtype != np.int32:
            raise ValueError(f"{caller}(): positions must be an int or int32 of shape ({S},), "
                             f"got {positions.dtype} {positions.shape}")
        p0, pos, from_ptr = 0, positions, True
    freqs = _device_inv_freq(base, rotary_dim, x.device, inv_freq)
    # host-known frequencies and positions read cos/sin from tables; a device
    # inv_freq or device positions (unknown maximum) compute them in the kernel
    host_freqs = (inv_freq if inv_freq is not None and not isinstance(inv_freq, kdsl.Tensor)
                  else None if inv_freq is not None else _default_inv_freq(base, rotary_dim))
    from_table = host_freqs is not None and last_position is not None and H * S * D > 0
    cos, sin = (_cos_sin_tables(np.asarray(host_freqs, np.float32), last_position + 1, x.device)
                if from_table else (freqs, freqs))
    n_pairs = rotary_dim // 2
    pass_dims = D - rotary_dim
    consts = dict(POS_FROM_PTR=from_ptr, FROM_TABLE=from_table,
                  HALF_BLOCK=1 << max(n_pairs - 1, 0).bit_length(),
                  PASS_BLOCK=0 if pass_dims == 0 else 1 << max(pass_dims - 1, 0).bit_length())
    return [pos if pos is not None else freqs, freqs, cos, sin, p0, n_pairs], consts
