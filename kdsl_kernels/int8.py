"""8-bit weights (llama.cpp's Q8_0 idea): int8 codes with an fp16 scale per group of 32.

`quantize(w)` maps each group of 32 weights of a row to round(w / d) with
d = max|w| / 127 (codes in -127..127), `dequantize` gives back d * code, and
`linear(x, packed)` computes x @ W.T on the device reading the codes once.
Half the bytes of fp16 at an error far below FP4's: the engine keeps an LLM's
output projection (the LM head, a fifth of SmolLM2's weights, which FP4
would cost 8% perplexity) in this form.

Layout: codes int8 [N, K] row-major (K a multiple of the group size),
scales fp16 [N, K / 32] (uploaded as fp32 to CPU devices). A CPU whose
compiler has x86's pmaddwd reads a row-tiled copy instead
(Int8Weight.tiled_arrays) and takes x as int16 per group (int16_x), so its
products are integer ones, 16 per instruction.
"""
import numpy as np

import kdsl
import kdsl.language as kl

from kdsl.device_features import has_int16_pair_dot

from .configs import blocks_per_program
from .elementwise import as_tensor, check_out
from .int16_x import int16_x_groups
from .row_tiles import ROW_TILE, row_tiled
from .scratch import scratch

GROUP = 32


class Int8Weight:
    """A [N, K] weight as int8 codes and fp16 per-group scales (host arrays; device copies
    are made once per device by `device_arrays`)."""

    def __init__(self, codes, scales):
        codes, scales = np.asarray(codes), np.asarray(scales)
        if codes.dtype != np.int8 or codes.ndim != 2 or codes.shape[1] % GROUP:
            raise ValueError(f"Int8Weight: codes must be int8 [N, K] with K a multiple of "
                             f"{GROUP}, got {codes.dtype} {codes.shape}")
        if scales.dtype != np.float16 or scales.shape != (codes.shape[0],
                                                          codes.shape[1] // GROUP):
            raise ValueError(f"Int8Weight: scales must be float16 of shape "
                             f"{(codes.shape[0], codes.shape[1] // GROUP)}, got "
                             f"{scales.dtype} {scales.shape}")
        self.codes, self.scales = codes, scales
        self._on_device = {}

    @property
    def shape(self):
        return self.codes.shape

    def device_arrays(self, device):
        """(codes, scales) as device tensors, uploaded at the first call per device.

        A CPU gets the scales as fp32: PoCL converts fp16 in software, and the
        fp32 scales made SmolLM2's 49152 x 576 head 1.2x faster there (3.38 ->
        2.81 ms device time, .scratch A/B, 2026-11-23) for 6% more bytes."""
        key = device.fingerprint
        if key not in self._on_device:
            scales = self.scales.astype(np.float32) if device.is_cpu else self.scales
            self._on_device[key] = (kdsl.tensor(np.ascontiguousarray(self.codes), device=device),
                                    kdsl.tensor(np.ascontiguousarray(scales), device=device))
        return self._on_device[key]

    def upload(self, device):
        """Upload now what `device`'s default kernel reads (the row-tiled copy
        where that is the CPU's integer GEMV, else the row layout), rather
        than at the first call."""
        if _default_config(device, self.shape[0]).get("lanes") == "int16":
            self.tiled_arrays(device)
        else:
            self.device_arrays(device)

    def tiled_arrays(self, device):
        """(codes, scales) in the row-tiled layout of the CPU's integer GEMV
        (row_tiles.py), uploaded at the first call per device: row r's group
        g at block b, its codes at codes[b * 32 ...], its scale (fp32) at
        scales[b]."""
        key = ("tiled", device.fingerprint)
        if key not in self._on_device:
            n_groups = self.shape[1] // GROUP
            self._on_device[key] = (
                kdsl.tensor(row_tiled(self.codes, n_groups, GROUP), device=device),
                kdsl.tensor(row_tiled(self.scales.astype(np.float32), n_groups, 1),
                            device=device))
        return self._on_device[key]

    def __repr__(self):
        return f"Int8Weight(shape={self.shape}, group={GROUP})"


def quantize(w):
    """Int8Weight of a float [N, K] weight, K a multiple of 32.

    >>> packed = quantize(np.ones((2, 64), np.float32))
    >>> float(np.abs(dequantize(packed) - 1).max())
    0.0
    """
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2 or w.shape[1] % GROUP:
        raise ValueError(f"int8.quantize(): w must be [N, K] with K a multiple of {GROUP}, got "
                         f"shape {w.shape}")
    groups = w.reshape(w.shape[0], -1, GROUP)
    scales = (np.abs(groups).max(axis=2) / 127.0).astype(np.float16)
    d = scales.astype(np.float32)[..., None]
    codes = np.where(d > 0, np.rint(groups / np.where(d > 0, d, 1.0)), 0.0)
    return Int8Weight(np.clip(codes, -127, 127).astype(np.int8).reshape(w.shape), scales)


def dequantize(packed):
    """The float32 [N, K] weight the codes stand for."""
    groups = packed.codes.reshape(packed.shape[0], -1, GROUP).astype(np.float32)
    return (groups * packed.scales.astype(np.float32)[..., None]).reshape(packed.shape)


@kdsl.jit
def q8_gemv_kernel(x_ptr, codes_ptr, scales_ptr, y_ptr, N, K, stride_xm, stride_ym,
                   EVEN: kl.constexpr, BN: kl.constexpr, G: kl.constexpr):
    """y[m] = W x[m] for BN rows per program and row m = program_id(1) of x; one
    group of G codes per row per step, scaled by the group's scale (fp16, or
    fp32 on CPUs: see Int8Weight.device_arrays)."""
    m = kl.program_id(1)
    rn = kl.program_id(0) * BN + kl.arange(0, BN)
    rk = kl.arange(0, G)
    n_groups = K // G
    row_ok = rn < N
    if not EVEN:
        rn = kl.minimum(rn, N - 1)          # padding rows re-read the last one
    acc = kl.zeros((BN, G), dtype=kl.float32)
    for g in range(0, n_groups):
        x = kl.load(x_ptr + m * stride_xm + g * G + rk)
        c = kl.load(codes_ptr + rn[:, None] * K + g * G + rk[None, :]).to(kl.float32)
        s = kl.load(scales_ptr + rn * n_groups + g)
        acc += c * x[None, :] * s[:, None]
    y = kl.sum(acc, axis=1)
    if EVEN:
        kl.store(y_ptr + m * stride_ym + rn, y)
    else:
        kl.store(y_ptr + m * stride_ym + rn, y, mask=row_ok)


@kdsl.jit
def q8_gemv_rows_kernel(x_ptr, codes_ptr, scales_ptr, y_ptr, N, K, stride_xm, stride_ym,
                        ROWS: kl.constexpr, G: kl.constexpr):
    """q8_gemv_kernel's result, ROWS consecutive weight rows per program taken one
    after another (CPUs): the program reads one contiguous stream of codes, and
    N / ROWS programs instead of N."""
    m = kl.program_id(1)
    rk = kl.arange(0, G)
    n_groups = K // G
    first = kl.program_id(0) * ROWS
    for row in range(first, min(first + ROWS, N)):
        acc = kl.zeros((G,), dtype=kl.float32)
        for g in range(0, n_groups):
            x = kl.load(x_ptr + m * stride_xm + g * G + rk)
            c = kl.load(codes_ptr + row * K + g * G + rk).to(kl.float32)
            acc += c * x * kl.load(scales_ptr + row * n_groups + g)
        kl.store(y_ptr + m * stride_ym + row, kl.sum(acc, axis=0))


@kdsl.jit
def q8_gemv_int16_kernel(x_ptr, codes_ptr, scales_ptr, y_ptr, xq_ptr, xs_ptr, N, K,
                         stride_xm, stride_ym, G: kl.constexpr, R: kl.constexpr,
                         T: kl.constexpr):
    """q8_gemv_kernel's result on the row-tiled layout (Int8Weight.tiled_arrays),
    T tiles of R rows per program one after another, with integer products:
    the program converts its row m of x to int16 per group once
    (int16_x_groups, into its scratch slot: K int16 at xq_ptr, 2 K / G
    floats at xs_ptr), then per tile and group sums codes * xq as an integer
    kl.dot (pmaddwd on PoCL x86) and scales it by the row's scale times the
    group's d."""
    m = kl.program_id(1)
    slot = m * kl.num_programs(0) + kl.program_id(0)
    n_groups = K // G
    xq_ptr += slot * K
    xs_ptr += slot * (2 * n_groups)
    int16_x_groups(x_ptr + m * stride_xm, x_ptr, xq_ptr, xs_ptr, K, n_groups, G, True, False,
                   False)
    rr = kl.arange(0, R)
    rk = kl.arange(0, G)
    for t in range(0, T):
        tile = kl.program_id(0) * T + t
        if tile * R < N:
            y = kl.zeros((R,), dtype=kl.float32)
            for g in range(0, n_groups):
                block = (tile * n_groups + g) * R
                c = kl.load(codes_ptr + (block + rr)[:, None] * G + rk[None, :])
                qx = kl.sum(kl.dot(c, kl.load(xq_ptr + g * G + rk)[:, None]), axis=1)
                y += qx.to(kl.float32) * (kl.load(scales_ptr + block + rr)
                                          * kl.load(xs_ptr + 2 * g))
            rows = tile * R + rr
            kl.store(y_ptr + m * stride_ym + rows, y, mask=rows < N)


def _default_config(device, N):
    # PoCL: runs of consecutive rows in one work-item (q8_gemv_rows_kernel), 64
    # where N leaves 8 programs per core: SmolLM2's 49152 x 576 head, caches
    # flushed, medians of 4 alternations (.scratch/q8_rows.py, 2026-12-07): 64
    # rows 1.07 ms, 4-16 rows 1.13-1.15, one row per program 1.27 (49152
    # programs; PoCL spends 0.39 ms on that many empty work-groups). Blocks of
    # 2 and 4 rows (q8_gemv_kernel) ran 2-3x slower: 2-4 strided streams.
    # H100, from the engine's profile: SmolLM2's head in 32 us (0.9 TB/s of codes)
    # Where the CPU has x86's pmaddwd: integer products against x as int16 over
    # 8-row tiles (q8_gemv_int16_kernel), 8 programs per compute unit. The same
    # head, 3 cycled, wall time of alternated launches in two runs (the VM's fast
    # and slow memory phases; .scratch/s14/q8_ab.py, 2026-12-07): 0.98 and 1.13
    # ms against 1.12 and 1.67 for the runs of 64 rows; 1 program per unit 1.03
    # and 1.44, 512 rows per program 0.92 and 1.43
    if device.is_cpu and has_int16_pair_dot(device):
        return {"lanes": "int16", "per_cu": 8, "num_threads": 1}
    if device.is_cpu:
        return {"ROWS": max(1, min(64, N // (8 * device.compute_units))), "num_threads": 1}
    return {"BN": 8, "num_threads": 32}


def linear(x, packed, *, out=None, config=None):
    """x @ W.T for x [M, K] (fp32, rows contiguous) and an Int8Weight W [N, K]; returns out
    [M, N] fp32 (out may be a view with contiguous rows). Each row of x reads the codes once:
    meant for M = 1 (decode) and small M. config: {"ROWS", "num_threads"} (runs of ROWS
    consecutive weight rows per program, the CPU default) or {"BN", "num_threads"} (blocks
    of BN rows, the GPU default); None picks the device's default."""
    x = as_tensor(x, "int8.linear", "x")
    N, K = packed.shape
    if x.ndim != 2 or x.shape[1] != K or x.dtype != np.float32:
        raise ValueError(f"int8.linear(): x must be float32 [M, {K}], got {x.dtype} {x.shape}")
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError(f"int8.linear(): x's rows must be contiguous, got strides {x.strides}")
    M = x.shape[0]
    if out is None:
        out = kdsl.empty((M, N), np.float32, device=x.device)
    check_out(out, (M, N), "int8.linear")
    if N > 1 and out.stride(1) != 1:
        raise ValueError(f"int8.linear(): out's rows must be contiguous, got strides "
                         f"{out.strides}")
    if M * N == 0:
        return out
    cfg = dict(config or _default_config(x.device, N))
    cfg.setdefault("num_threads", 1 if x.device.is_cpu else 32)
    if cfg.get("lanes") == "int16":
        return _linear_int16(x, packed, out, cfg)
    codes, scales = packed.device_arrays(x.device)
    if "ROWS" in cfg:
        q8_gemv_rows_kernel[(kdsl.cdiv(N, cfg["ROWS"]), M)](
            x, codes, scales, out, N, K, x.stride(0), out.stride(0), ROWS=cfg["ROWS"], G=GROUP,
            num_threads=cfg["num_threads"])
        return out
    q8_gemv_kernel[(kdsl.cdiv(N, cfg["BN"]), M)](
        x, codes, scales, out, N, K, x.stride(0), out.stride(0), EVEN=N % cfg["BN"] == 0,
        BN=cfg["BN"], G=GROUP, num_threads=cfg["num_threads"])
    return out


def _linear_int16(x, packed, out, cfg):
    """out = x @ W.T through q8_gemv_int16_kernel (CPUs with pmaddwd)."""
    if not x.device.is_cpu:
        raise ValueError(f"int8.linear(): the int16-lane config runs on CPU devices only, and "
                         f"{x.device} is not one; pass config=None (the device's default) or "
                         f"{{'BN': 8, 'num_threads': 32}}")
    (N, K), M = packed.shape, x.shape[0]
    codes, scales = packed.tiled_arrays(x.device)
    tiles = kdsl.cdiv(N, ROW_TILE)
    T = blocks_per_program(cfg, tiles, x.device)
    programs = kdsl.cdiv(tiles, T)
    xq = scratch("q8_gemv_int16_x", x.device, programs * M * K, dtype=np.int16)
    xs = scratch("q8_gemv_int16_scales", x.device, programs * M * 2 * (K // GROUP))
    q8_gemv_int16_kernel[(programs, M)](x, codes, scales, out, xq, xs, N, K, x.stride(0),
                                        out.stride(0), G=GROUP, R=ROW_TILE, T=T,
                                        num_threads=cfg["num_threads"])
    return out
