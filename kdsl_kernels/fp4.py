"""FP4 weights in Transformer-Lite's "M0E4" spirit: 4-bit codes whose fp16
value is a couple of bit operations away, with a per-group fp16 scale and
offset, dequantised inside the GEMV/GEMM kernels.

    >>> import numpy as np, kdsl
    >>> from kdsl_kernels import fp4
    >>> w = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
    >>> packed = fp4.quantize(w, group_size=64)          # 4.5 bits per weight
    >>> x = np.ones((1, 512), np.float32)
    >>> y = fp4.linear(kdsl.tensor(x), packed)           # x [M, 512] -> [M, 256] = x @ W.T
    >>> np.allclose(y.numpy(), x @ fp4.dequantize(packed).T, atol=1e-3)
    True

The layout (bit by bit in docs/fp4.md). K is padded to a multiple of the
group size G with zero weights. Per row and group (G weights along K):

- codes: G/2 bytes. Byte j holds the code of element j in its low nibble
  and of element j + G/2 in its high nibble (llama.cpp's Q4_0 order), so a
  kernel reads two contiguous halves of x against one contiguous run of bytes.
- scale s and offset o: fp16. The weight is  w = s * m(q) + o,  where m(q),
  the code's "mantissa value", depends on the reading:
    "e0m4" (default, uniform grid): m(q) = as_half(0x3C00 | q << 6) = 1 + q/16
    "e4m0" (power-of-two grid):     m(q) = as_half((q + 1) << 10) = 2**(q - 14)
  The same numbers come from fp32 bit patterns (fp16 is storage only on the
  devices we target): as_float(0x3F800000 | q << 19) and as_float((q + 113) << 23).

Optional outliers (mllm-NPU): the `outliers` input channels (columns of W)
with the largest |w| are taken out of the groups before quantising (so they
do not stretch their groups' ranges) and kept as fp16 residuals beside the
FP4 body; dequantize() and the kernels add them back.
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .row_tiles import ROW_TILE, row_tiled  # noqa: F401  (fp4.ROW_TILE: docs/fp4.md)

READINGS = ("e0m4", "e4m0")
DEFAULT_READING = "e0m4"
GROUP_SIZES = (16, 32, 64, 128, 256)


def mantissa_value(q, reading):
    """m(q) of the reading, as float32: the fp16 value the bit trick builds.

    >>> mantissa_value(np.arange(16), "e0m4")[:3]
    array([1.    , 1.0625, 1.125 ], dtype=float32)
    """
    q = np.asarray(q).astype(np.uint32)
    if reading == "e0m4":
        return (np.uint32(0x3F800000) | (q << np.uint32(19))).view(np.float32)
    if reading == "e4m0":
        return ((q + np.uint32(113)) << np.uint32(23)).view(np.float32)
    raise ValueError(f"unknown FP4 reading {reading!r}; choose one of {READINGS}")


class PackedWeight:
    """A quantised [N, K] weight: numpy fields, uploaded to a device once.

    Fields: `codes` uint8 [N, Kp/2], `scales` and `offsets` float16
    [N, Kp/G] (Kp = K rounded up to G), `outlier_idx` int32 [n_out] and
    `outlier_w` float16 [N, n_out] (the fp16 residuals of the outlier
    columns), `shape` (N, K), `group_size` G, `reading`.

    >>> arrays = packed.to_arrays()                 # for an on-disk cache (np.savez)
    >>> same = PackedWeight.from_arrays(arrays)
    """

    _FIELDS = ("codes", "scales", "offsets", "outlier_idx", "outlier_w")

    def __init__(self, codes, scales, offsets, shape, group_size, reading=DEFAULT_READING,
                 outlier_idx=None, outlier_w=None):
        n, k = (int(d) for d in shape)
        _check_group_size(group_size)
        if reading not in READINGS:
            raise ValueError(f"unknown FP4 reading {reading!r}; choose one of {READINGS}")
        n_groups = -(-k // group_size)
        self.codes = np.ascontiguousarray(codes, dtype=np.uint8)
        self.scales = np.ascontiguousarray(scales, dtype=np.float16)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.float16)
        if outlier_idx is None:
            outlier_idx = np.zeros(0, np.int32)
            outlier_w = np.zeros((n, 0), np.float16)
        self.outlier_idx = np.ascontiguousarray(outlier_idx, dtype=np.int32)
        self.outlier_w = np.ascontiguousarray(outlier_w, dtype=np.float16)
        expected = {"codes": (n, n_groups * group_size // 2), "scales": (n, n_groups),
                    "offsets": (n, n_groups), "outlier_w": (n, len(self.outlier_idx))}
        for name, want in expected.items():
            if getattr(self, name).shape != want:
                raise ValueError(f"PackedWeight: {name} has shape {getattr(self, name).shape}, "
                                 f"expected {want} for a {n}x{k} weight in groups of "
                                 f"{group_size}")
        if len(self.outlier_idx) and (self.outlier_idx.min() < 0 or self.outlier_idx.max() >= k):
            raise ValueError(f"PackedWeight: outlier_idx must lie in [0, {k})")
        self.shape = (n, k)
        self.group_size = int(group_size)
        self.reading = reading
        self._device_copies = {}

    @property
    def n_groups(self):
        return self.scales.shape[1]

    @property
    def nbytes(self):
        """Bytes a GEMV reads for this weight: codes, scales, offsets, outliers."""
        return sum(getattr(self, f).nbytes for f in self._FIELDS)

    def to_arrays(self):
        """The weight as a dict of numpy arrays (metadata as 0-d/1-d arrays)."""
        arrays = {f: getattr(self, f) for f in self._FIELDS}
        arrays["shape"] = np.asarray(self.shape, np.int64)
        arrays["group_size"] = np.asarray(self.group_size, np.int64)
        arrays["reading"] = np.asarray(self.reading)
        return arrays

    @classmethod
    def from_arrays(cls, arrays):
        """Inverse of to_arrays(); checks every field's shape."""
        missing = [f for f in cls._FIELDS + ("shape", "group_size", "reading") if f not in arrays]
        if missing:
            raise ValueError(f"PackedWeight.from_arrays(): missing field(s) {missing}")
        return cls(arrays["codes"], arrays["scales"], arrays["offsets"],
                   tuple(np.asarray(arrays["shape"]).tolist()),
                   int(arrays["group_size"]), str(arrays["reading"]),
                   arrays["outlier_idx"], arrays["outlier_w"])

    def device_arrays(self, device):
        """The weight's device tensors on `device`, each uploaded on first use.

        Row layout (the fields, as numpy holds them): "codes", "scales",
        "offsets", "outlier_idx", "outlier_w", and "words", the codes buffer
        viewed as uint32 (little-endian: byte 0 in bits 0..7), which the GPU
        kernels read. Row-tiled layout (tiled_layout()), which the CPU kernels
        read: "tiled_codes", "tiled_step", "tiled_base". Only what a kernel
        asks for is uploaded, so a CPU holds no row-layout codes and a GPU no
        tiled ones; upload() makes a device's usual set ahead of time."""
        key = device.fingerprint
        if key not in self._device_copies:
            self._device_copies[key] = _DeviceArrays(self, device)
        return self._device_copies[key]

    def upload(self, device):
        """Upload now what `device`'s default kernels read (the row-tiled
        layout on a CPU, the row layout elsewhere), rather than at the first
        call; returns device_arrays(device)."""
        arrays = self.device_arrays(device)
        names = (("tiled_codes", "tiled_step", "tiled_base") if device.is_cpu
                 else ("words", "scales", "offsets"))
        for name in names + ("outlier_idx", "outlier_w"):
            arrays[name]
        return arrays

    def tiled_layout(self):
        """(codes, step, base) in the CPU kernels' row-tiled layout
        (row_tiles.py): row r's group g at block b, its G/2 code bytes at
        codes[b * G/2 ...], its step and base (group_affine()) at step[b],
        base[b]. From DRAM the GEMV ran 1.5-1.9x slower on the row layout,
        where a program's rows were ROW_TILE streams of G/2 bytes each."""
        step, base = self.group_affine()
        return (row_tiled(self.codes, self.n_groups, self.group_size // 2),
                row_tiled(step, self.n_groups, 1), row_tiled(base, self.n_groups, 1))

    def group_affine(self):
        """Per group fp32 (step, base), each [N, n_groups], with w = step * v(q) + base:
        v(q) = q for the uniform "e0m4" reading (step = s/16, base = s + o, as
        m(q) = 1 + q/16), v(q) = m(q) for "e4m0" (step = s, base = o).

        PoCL converts fp16 in software (no cl_khr_fp16 on CPUs): reading these
        instead of the fp16 scale and offset made the CPU GEMV 1.2-1.45x
        faster, for 4 more bytes per group of the weight."""
        s = self.scales.astype(np.float32)
        o = self.offsets.astype(np.float32)
        if self.reading == "e0m4":
            return np.ascontiguousarray(s / 16), np.ascontiguousarray(s + o)
        return np.ascontiguousarray(s), np.ascontiguousarray(o)

    def __repr__(self):
        n, k = self.shape
        return (f"PackedWeight({n}x{k}, {self.reading}, groups of {self.group_size}, "
                f"{len(self.outlier_idx)} outlier channels, {self.nbytes} bytes)")


class _DeviceArrays(dict):
    """PackedWeight.device_arrays(): a dict that uploads an entry when it is first read."""

    _TILED = ("tiled_codes", "tiled_step", "tiled_base")

    def __init__(self, packed, device):
        super().__init__()
        self._packed, self._device = packed, device

    def __missing__(self, name):
        import kdsl
        packed, device = self._packed, self._device
        if name in PackedWeight._FIELDS:
            a = getattr(packed, name)
            # a zero-length buffer cannot be allocated: outlier-free weights
            # pass a one-element placeholder the kernel never reads
            self[name] = kdsl.tensor(a if a.size else np.zeros(1, a.dtype), device=device)
        elif name == "words":
            codes = self["codes"]
            self[name] = kdsl.Tensor(codes.buffer, (codes.size // 4,), np.uint32, device)
        elif name == "tiled_words16":
            # the row-tiled codes as 16-bit words (the int16 GEMV's nibble planes)
            codes = self["tiled_codes"]
            self[name] = kdsl.Tensor(codes.buffer, (codes.size // 2,), np.int16, device)
        elif name in self._TILED:
            for key, a in zip(self._TILED, packed.tiled_layout()):
                self[key] = kdsl.tensor(a if a.size else np.zeros(1, a.dtype), device=device)
        else:
            raise KeyError(f"PackedWeight has no device array {name!r}")
        return self[name]


def quantize(w, group_size=64, *, reading=DEFAULT_READING, outliers=0):
    """Quantise a numpy [N, K] weight to FP4; returns a PackedWeight.

    group_size: weights per scale/offset pair along K (a power of two, 16..256).
    reading: "e0m4" (uniform grid, default) or "e4m0" (power-of-two grid).
    outliers: how many input channels to keep as fp16 residuals.

    >>> packed = quantize(np.ones((4, 100), np.float32), group_size=32)
    >>> packed.codes.shape, packed.scales.shape
    ((4, 64), (4, 4))
    """
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"fp4.quantize(): w must be a 2-D [N, K] weight, got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"fp4.quantize(): w must be floating point, got {w.dtype}")
    _check_group_size(group_size)
    if reading not in READINGS:
        raise ValueError(f"fp4.quantize(): unknown reading {reading!r}; choose one of {READINGS}")
    w = w.astype(np.float32)
    if not np.isfinite(w).all():
        raise ValueError("fp4.quantize(): w contains NaN or infinity")
    n, k = w.shape
    if not 0 <= outliers <= k:
        raise ValueError(f"fp4.quantize(): outliers must be in [0, {k}], got {outliers}")
    idx = np.sort(np.argsort(-np.abs(w).max(axis=0, initial=0), kind="stable")[:outliers])
    body = w.copy()
    body[:, idx] = 0.0
    groups = _to_groups(body, group_size)
    with np.errstate(over="ignore", invalid="ignore"):    # overflow is reported below
        scales, offsets, codes = _quantize_groups(groups, reading)
    if not (np.isfinite(scales).all() and np.isfinite(offsets).all()):
        raise ValueError("fp4.quantize(): a group's scale or offset overflows fp16 (|w| up to "
                         f"{np.abs(w).max():.3g}); scale the weight down first")
    packed = PackedWeight(_pack(codes, group_size), scales, offsets, (n, k), group_size, reading)
    if outliers:
        residual = w[:, idx] - _dequantize_body(packed)[:, idx]
        packed = PackedWeight(packed.codes, scales, offsets, (n, k), group_size, reading,
                              idx.astype(np.int32), residual.astype(np.float16))
    return packed


def dequantize(packed):
    """The float32 [N, K] weight a PackedWeight stands for (what the kernels compute with).

    >>> w = np.linspace(-1, 1, 64, dtype=np.float32)[None, :]
    >>> float(np.abs(dequantize(quantize(w, 64)) - w).max()) < 2 / 15 / 2 + 1e-3
    True
    """
    if not isinstance(packed, PackedWeight):
        raise TypeError(f"fp4.dequantize(): expected a PackedWeight, got {type(packed).__name__}")
    w = _dequantize_body(packed)
    w[:, packed.outlier_idx] += packed.outlier_w.astype(np.float32)
    return w


def linear(x, packed, *, bias=None, out=None, config=None, activation=None, rms_norm=None,
           accumulate=False):
    """x @ W.T on the device for x [M, K] float32 and W the packed [N, K] weight.

    M == 1 runs the fused dequantising GEMV (the decode path), M > 1 the
    fused dequantising GEMM (prefill). bias: [N]. Returns float32 [M, N],
    written into `out` (any view with last stride 1) when given. config:
    {"BN", "BW", "DEQ", "num_threads"} for the GPU GEMV, {"BN", "BK", "lanes":
    "bytes", "num_threads"} for the CPU one, {"BM", "BN", "DEQ",
    "num_threads"} for the GEMM's register tiles, plus "BK" and
    "acc_in_memory": True for its weight-stationary form (the CPU default);
    None takes the tuned or default config.

    activation="swiglu": W holds an MLP's gate rows then its up rows (N = 2F)
    and the result is silu(x @ Wg.T) * (x @ Wu.T), [M, F].
    rms_norm=(weight, eps): x is first replaced by rms_norm(x, weight, eps)
    (weight float32 [K]). accumulate=True: out += the result (a residual add).
    The GEMV does all three in its one launch; the GEMM path runs the norm,
    activation and add kernels around it.

    >>> out = kdsl.empty((1, packed.shape[0]))
    >>> linear(kdsl.tensor(np.ones((1, packed.shape[1]), np.float32)), packed, out=out)
    >>> linear(x, w_qkv, rms_norm=(attn_norm, 1e-5))         # the norm in the GEMV
    >>> linear(attn, w_o, out=residual, accumulate=True)       # residual += attn @ Wo.T
    """
    from .fp4_kernels import fp4_linear
    return fp4_linear(x, packed, bias=bias, out=out, config=config, activation=activation,
                      rms_norm=rms_norm, accumulate=accumulate)


# ----------------------------------------------------------------- internals
def _check_group_size(group_size):
    if group_size not in GROUP_SIZES:
        raise ValueError(f"FP4 group_size must be one of {GROUP_SIZES}, got {group_size!r}")


def _to_groups(w, group_size):
    """[N, K] -> [N, Kp/G, G], K zero-padded to a multiple of G."""
    n, k = w.shape
    kp = -(-k // group_size) * group_size
    if kp != k:
        w = np.concatenate([w, np.zeros((n, kp - k), w.dtype)], axis=1)
    return w.reshape(n, kp // group_size, group_size)


# Rows of a weight quantised together: about 256K elements (1 MB of fp32), so
# the dozen elementwise passes over a chunk run in the core's L2, not DRAM
CHUNK_ELEMENTS = 1 << 18


def _quantize_groups(groups, reading):
    """Per-group fp16 (scale, offset) and uint8 codes [N, ng, G] for one reading.

    Row chunks are quantised independently (every group's fit is its own) on
    a thread per core (numpy's ufuncs release the GIL), with the same result
    bit for bit as in one piece. A 4096 x 4096 weight at G = 32: 1.37 s in
    one piece, 0.47-0.52 s in chunks on this project's 2-core VM, and as fast
    on one of its cores (taskset): the gain there is the cache, the threads
    are for machines with more cores."""
    fit = _quantize_uniform if reading == "e0m4" else _quantize_pow2
    rows = max(1, CHUNK_ELEMENTS // max(1, groups.shape[1] * groups.shape[2]))
    chunks = [groups[i:i + rows] for i in range(0, groups.shape[0], rows)]
    if len(chunks) <= 1:
        return fit(groups)
    with ThreadPoolExecutor(min(len(chunks), os.cpu_count() or 1)) as pool:
        parts = list(pool.map(fit, chunks))
    return tuple(np.concatenate(part, axis=0) for part in zip(*parts))


def _quantize_uniform(groups, refine=2):
    """Fit the 16 levels s*(1 + q/16) + o, i.e. a uniform grid of step s/16
    starting at s + o. Start from min/max (step d = (max - min)/15, s = 16 d,
    o = min - s), then `refine` rounds of: least-squares step and base for the
    current codes, re-round the codes; a group keeps a round only if its
    squared error went down. Codes are always rounded against the
    fp16-rounded s and o, so the stored constants are the ones they fit."""
    lo = groups.min(axis=-1)
    hi = groups.max(axis=-1)
    scales, offsets, codes, err = _uniform_codes(groups, (hi - lo) / 15.0, lo)
    n = groups.shape[-1]
    for _ in range(refine):
        q = codes.astype(np.float32)
        sum_q, sum_qq = q.sum(-1), (q * q).sum(-1)
        sum_w, sum_qw = groups.sum(-1), (q * groups).sum(-1)
        det = n * sum_qq - sum_q * sum_q
        ok = det > 0
        step = np.where(ok, (n * sum_qw - sum_q * sum_w) / np.where(ok, det, 1.0), 0.0)
        step = np.where(ok & (step > 0), step, (hi - lo) / 15.0)
        base = np.where(ok, (sum_w - step * sum_q) / n, lo)
        cand = _uniform_codes(groups, step, base)
        better = cand[3] < err
        scales = np.where(better, cand[0], scales)
        offsets = np.where(better, cand[1], offsets)
        codes = np.where(better[..., None], cand[2], codes)
        err = np.minimum(cand[3], err)
    return scales, offsets, codes


def _uniform_codes(groups, step, base):
    """fp16 s, o for a grid of `step` from `base`, the nearest codes and the squared error."""
    scales = (16.0 * step).astype(np.float16)
    offsets = (base - scales.astype(np.float32)).astype(np.float16)
    s = scales.astype(np.float32)[..., None]
    o = offsets.astype(np.float32)[..., None]
    safe = np.where(s == 0, 1.0, s)
    # (groups - o - s) * 16 / safe, rounded and clipped, one buffer in place
    codes = groups - o
    codes -= s
    codes *= 16.0
    codes /= safe
    np.rint(codes, out=codes)
    np.clip(codes, 0, 15, out=codes)
    # the squared error of s + s * codes / 16 + o against the weights
    diff = s * codes
    diff /= 16.0
    diff += s
    diff += o
    diff -= groups
    diff *= diff
    return scales, offsets, codes.astype(np.uint8), diff.sum(axis=-1)


# Power-of-two grid: levels o + s * 2**(q - 14). The grid is dense at one end,
# so each group picks the end (sign of s) and how many octaves (top code) to
# span from these candidates, whichever gives the least squared error.
_POW2_TOPS = (4, 5, 6, 7, 8, 10, 15)


def _quantize_pow2(groups):
    lo = groups.min(axis=-1)
    hi = groups.max(axis=-1)
    levels = mantissa_value(np.arange(16), "e4m0")
    best = None
    for top in _POW2_TOPS:
        span = levels[top] - levels[0]
        for dense_at_min in (True, False):
            base, far = (lo, hi) if dense_at_min else (hi, lo)
            scales = ((far - base) / span).astype(np.float16)
            offsets = (base - scales.astype(np.float32) * levels[0]).astype(np.float16)
            codes = _nearest_level(groups, scales, offsets, levels)
            err = ((levels[codes] * scales.astype(np.float32)[..., None]
                    + offsets.astype(np.float32)[..., None] - groups) ** 2).sum(axis=-1)
            if best is None:
                best = [scales, offsets, codes, err]
                continue
            better = err < best[3]
            best[0] = np.where(better, scales, best[0])
            best[1] = np.where(better, offsets, best[1])
            best[2] = np.where(better[..., None], codes, best[2])
            best[3] = np.minimum(err, best[3])
    return best[0], best[1], best[2]


def _nearest_level(groups, scales, offsets, levels):
    """Code of the nearest level s*levels[q] + o (levels increasing, s of either sign)."""
    s = scales.astype(np.float32)[..., None]
    o = offsets.astype(np.float32)[..., None]
    safe = np.where(s == 0, 1.0, s)
    t = (groups - o) / safe                      # the wanted level value
    mids = (levels[1:] + levels[:-1]) / 2
    return np.searchsorted(mids, t).astype(np.uint8)


def _pack(codes, group_size):
    """[N, ng, G] codes -> [N, ng*G/2] bytes: low nibble element j, high j + G/2."""
    half = group_size // 2
    packed = codes[..., :half] | (codes[..., half:] << 4)
    return packed.reshape(codes.shape[0], codes.shape[1] * half)


def _unpack(packed_codes, group_size):
    """Inverse of _pack: [N, ng*G/2] bytes -> [N, ng, G] codes."""
    half = group_size // 2
    b = packed_codes.reshape(packed_codes.shape[0], packed_codes.shape[1] // half, half)
    return np.concatenate([b & 15, b >> 4], axis=-1)


def _dequantize_body(packed):
    """The FP4 body alone (no outliers) as float32 [N, K]."""
    codes = _unpack(packed.codes, packed.group_size)
    m = mantissa_value(codes, packed.reading)
    scales = packed.scales.astype(np.float32)[..., None]
    w = m * scales + packed.offsets.astype(np.float32)[..., None]
    n, k = packed.shape
    return np.ascontiguousarray(w.reshape(n, packed.n_groups * packed.group_size)[:, :k])
