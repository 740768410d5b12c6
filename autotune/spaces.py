"""Search spaces of the library's kernels, generated from the device's properties.

A new device needs no hand-written list: tile sizes follow its preferred
vector width, work-group sizes its maximum, operand tiles must fit its local
memory, and a config must give every compute unit a program. CPUs (PoCL)
and GPUs get different families, as they want different code: on a CPU one
work-item per work-group holds a register tile whose contiguous columns LLVM
vectorises; on a GPU many work-items share tiles through local memory.

Each kernel is a `Tunable`: its space, the library's default config (what a
wrapper runs untuned), inputs for a key, and one launch of a config through
the library wrapper, so tuning times exactly what the engine runs.

    >>> space = KERNELS["matmul"].space(kdsl.current_device(),
    ...                                 {"M": 64, "N": 1536, "K": 576, "trans_b": True})
    >>> space[0]
    {'BM': 8, 'BN': 32, 'BK': 16, 'num_threads': 1}
"""
import functools
import itertools
import json
import math
import zlib

import numpy as np

import kdsl
from kdsl import tuning_db
from kdsl.device_features import has_int16_pair_dot
from kdsl_kernels.configs import RUNS, blocks_per_program
from kdsl_kernels.fp4_kernels import GEMV_FORM_PARAMS, gemv_default

# How many configs a task times at most; the ones nearest the default (in
# log2 of each parameter) are kept, so a cut space still searches around it.
MAX_CONFIGS = 24


def pow2_ceil(n):
    """The smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def _vector_width(device):
    return max(4, device.preferred_vector_width_float or 4)


def _work_group_sizes(device, choices):
    return [t for t in choices if t <= device.max_work_group_size]


def _limit(configs, default, max_configs, optional=()):
    """At most `max_configs` distinct configs, the nearest to `default` first.

    Each config is first completed from the default and cut to its
    parameters, so a kernel that gains a parameter is searched with its
    default value rather than failing, and one that loses a parameter is not
    given it. Names in `optional` (parameters one form of a kernel takes and
    another not, as configs.tuned matches them) are kept where a config has
    them and never added; configs are then taken from each form in turn (a
    form: which optional names a config has and their non-numeric values),
    nearest first within each, so a form unlike the default's is timed too.
    """
    def projected(c):
        out = {k: c.get(k, v) for k, v in default.items() if k not in optional or k in c}
        out.update((k, c[k]) for k in optional if k in c)
        return out

    unique = list({tuning_db.key_text(c): c for c in map(projected, configs)}.values())

    def distance(config):
        return sum(abs(math.log2(config[k]) - math.log2(v))
                   if isinstance(v, int) and v > 0 and config[k] > 0 else float(config[k] != v)
                   for k, v in default.items() if k in config)

    def form(config):
        return tuple(sorted((k, config[k] if isinstance(config[k], (str, bool)) else None)
                            for k in optional if k in config))

    forms = {}
    for c in sorted(unique, key=distance):
        forms.setdefault(form(c), []).append(c)
    queues = sorted(forms.values(), key=lambda q: distance(q[0]))
    chosen = []
    while len(chosen) < max_configs and any(queues):
        for q in queues:
            if q and len(chosen) < max_configs:
                chosen.append(q.pop(0))
    return chosen


def _within(size, extent, options):
    """Whether a tile `size` is worth trying for an `extent`: not past the next power of
    two, except that the smallest option always is (tiny shapes still get a space)."""
    return size <= max(pow2_ceil(extent), min(options))


def _enough_programs(configs, programs, device):
    """Drop configs that leave compute units idle, unless every config does."""
    busy = [c for c in configs if programs(c) >= device.compute_units]
    return busy or configs


def _cpu_gemv_programs(config, N, device):
    """Programs of a GEMV config over N rows: blocks of BN rows, T of them
    per program (or as many as make per_cu programs per compute unit)."""
    blocks = -(-N // config["BN"])
    return -(-blocks // blocks_per_program(config, blocks, device))


# -------------------------------------------------------------- the spaces
def matmul_space(device, key):
    """Tiled GEMM: BM x BN tile of C per work-group, K in steps of BK; on a
    CPU with and without B packed into panels first."""
    M, N, K = key["M"], key["N"], key["K"]
    vw = _vector_width(device)
    bks = (8, 16, 32)
    if device.is_cpu:
        # BN = vw: weights stored [N, K] want narrow tiles (8 x 8 x 32 is the default)
        bms, bns = (4, 8, 16), (vw, 2 * vw, 4 * vw, 8 * vw)
        tiles = [(bm, bn, bk, 1) for bm in bms for bn in bns for bk in bks
                 if bm * bn <= 64 * vw]          # the accumulator stays in vector registers
    else:
        bms = bns = (32, 64, 128)
        tiles = [(bm, bn, bk, t) for bm in bms for bn in bns for bk in bks
                 for t in _work_group_sizes(device, (64, 128, 256))
                 if 4 <= bm * bn // t <= 64                     # micro-tile per work-item
                 and (bm + bn) * bk * 4 <= device.local_mem_size // 2]
    # a CPU also tries B packed into contiguous panels first (pack_b)
    packs = (False, True) if device.is_cpu else (False,)
    configs = [{"BM": bm, "BN": bn, "BK": bk, "num_threads": t, "pack_b": pack}
               for bm, bn, bk, t in tiles for pack in packs
               if _within(bm, M, bms) and _within(bn, N, bns) and _within(bk, K, bks)]
    return _enough_programs(configs, lambda c: -(-M // c["BM"]) * -(-N // c["BN"]), device)


def gemv_space(device, key):
    """GEMV: BN rows of W per work-group, read BK columns at a time; on a CPU
    also with runs of row blocks per program (T, or per_cu programs per
    compute unit)."""
    N, K = key["N"], key["K"]
    threads = (1, 4, 16, 64) if device.is_cpu else (32, 64, 128, 256)
    # elements per work-item: a CPU work-item's block is unrolled code, and
    # LLVM's compile time grows fast past a hundred or so
    per_item = (4, 128) if device.is_cpu else (2, 32)
    bks = (64, 128, 256, 512, 1024)
    configs = [{"BN": bn, "BK": bk, "num_threads": t}
               for bn, bk, t in itertools.product((1, 2, 4, 8), bks,
                                                  _work_group_sizes(device, threads))
               if per_item[0] <= bn * bk // t <= per_item[1] and _within(bk, K, bks)]
    if device.is_cpu:
        # one-work-item programs also over runs of rows: 16 or 64 blocks per
        # program, or 1, 2 or 4 programs per compute unit
        single = [c for c in configs if c["num_threads"] == 1]
        configs += ([dict(c, T=t) for c in single for t in (16, 64)]
                    + [dict(c, per_cu=p) for c in single for p in (1, 2, 4)])
    return _enough_programs(configs, lambda c: _cpu_gemv_programs(c, N, device), device)


def softmax_space(device, key):
    """Softmax: one row per work-group, BLOCK columns at a time (one pass when
    N <= BLOCK; else streamed in the "stored" or the "online" form), with
    fastmath's polynomial exp or the device's."""
    N = key["N"]
    threads = (1, 4, 16, 64) if device.is_cpu else (32, 64, 128, 256)
    per_item = (4, 128) if device.is_cpu else (1, 64)
    options = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    blocks = [b for b in options if _within(b, N, options)]
    return [{"BLOCK": b, "num_threads": t, **({"form": form} if b < N else {}), "exp": exp}
            for b, t in itertools.product(blocks, _work_group_sizes(device, threads))
            if t <= b and per_item[0] <= b // t <= per_item[1]
            for form in (("stored", "online") if b < N else (None,))
            for exp in ("poly", "lib")]


# FP4 dequantisation: from bit patterns, or by an int-to-float conversion; the
# GPU GEMV can also apply the scale and offset per word ("factor"), and do so
# with each code masked in place and converted, x scaled to match ("scaled").
DEQUANTISE = ("bits", "convert")
GEMV_DEQUANTISE = DEQUANTISE + ("factor", "scaled")


def fp4_gemv_space(device, key):
    """FP4 GEMV. On a CPU the byte-lane kernel: BN rows per work-group, one
    group per step, BK of its bytes at a time (16 or 32; 8 ran 2-4x slower);
    where the device has x86's pmaddwd also the int16-lane kernel (integer
    products, fp4_gemv_int16_kernel): 1, 2 or 4 programs per compute unit
    over 8-row tiles, or T tiles of 8-32 rows per program; for groups of 64+
    also with the codes read as bytes instead of 16-bit nibble planes.
    On a GPU: BN rows per work-group, BW packed 32-bit words (8 codes) per
    row per step, dequantising in floats, and tiles of whole groups (8-256 of
    each row per step) with integer products (lanes "idot", fp4_idot.py) at
    the x precision a default takes
    (int16: int8 changed SmolLM2's top token at 6 % of decode steps): the
    tuner picks speed, never numerics."""
    N, K, words_per_group = key["N"], key["K"], key["G"] // 8
    if device.is_cpu:
        byte_steps = [bk for bk in (16, 32) if bk <= key["G"] // 2] or [key["G"] // 2]
        configs = [{"BN": bn, "BK": bk, "lanes": "bytes", "num_threads": t}
                   for bn, bk, t in itertools.product((1, 2, 4, 8, 16), byte_steps,
                                                      _work_group_sizes(device, (1, 2, 4)))
                   if t <= bn]
        if has_int16_pair_dot(device):        # the tuner quantises with the uniform reading
            configs += ([{"BN": 8, "per_cu": p, "lanes": "int16", "num_threads": 1}
                         for p in (1, 2, 4)]
                        + [{"BN": bn, "T": t, "lanes": "int16", "num_threads": 1}
                           for bn, t in ((8, 1), (8, 4), (16, 1), (32, 1))])
            if key["G"] % 64 == 0:            # the planes' default against the codes as bytes
                configs += [{"BN": 8, "per_cu": p, "lanes": "int16", "planes": False,
                             "num_threads": 1} for p in (1, 2)]
        return _enough_programs(configs, lambda c: _cpu_gemv_programs(c, N, device), device)
    threads = (32, 64, 128, 256)
    widths = [w for w in (4, 8, 16, 32, 64, 128, 256, 512) if w >= words_per_group]
    configs = [{"BN": bn, "BW": bw, "DEQ": deq, "num_threads": t}
               for bn, bw, deq, t in itertools.product((1, 2, 4, 8, 16), widths, GEMV_DEQUANTISE,
                                                       _work_group_sizes(device, threads))
               if t <= bn * bw and _within(bw * 8, K, [w * 8 for w in widths])]
    xbits = gemv_default(device, K).get("XBITS", 16)
    # the integer form gives a work-item whole groups: BW / (G/8) of them per
    # row and step, at most one work-item per group (more split x's blocks
    # differently from the codes', and x then moves through local memory
    # every step)
    group_widths = [w * words_per_group for w in (8, 16, 32, 64, 128, 256)]
    # x quantised by a launch of its own, or inside the GEMV by every program
    # (FUSED_X: one launch, the quantisation repeated once per BN rows)
    configs += [{"BN": bn, "BW": bw, "lanes": "idot", "XBITS": xbits, "FUSED_X": fused,
                 "num_threads": t}
                for bn, bw, t, fused in itertools.product((1, 2, 4, 8, 16), group_widths,
                                                          _work_group_sizes(device, threads),
                                                          (False, True))
                if t <= bw // words_per_group
                and _within(bw * 8, K, [w * 8 for w in group_widths])
                and (bn >= 4 or not fused)]
    return _enough_programs(configs, lambda c: -(-N // c["BN"]), device)


def fp4_gemm_space(device, key):
    """FP4 GEMM. On a CPU the weight dequantised into fp32 panels and the
    matmul's panel GEMM (pack_b, the default for M >= 32), and the
    weight-stationary kernel (acc_in_memory: BN weight rows per work-item,
    BK bytes of a group dequantised once per step, all of A in blocks of BM
    rows, the accumulator in C); the GPU's register tiles ran 2-4x slower
    there and are not tried. On a GPU the BM x BN tiles over work-groups."""
    M, N = key["M"], key["N"]
    if device.is_cpu:
        # the accumulator tile: 2-8 rows x 8-32 columns, at most 64 floats; the
        # code tile BK x BN at most 256 (it is unrolled: 64 x 16 takes PoCL minutes)
        configs = [{"BM": bm, "BN": bn, "BK": bk, "acc_in_memory": True, "pack_b": False,
                    "num_threads": 1}
                   for bm, bn, bk in itertools.product((2, 4, 8), (8, 16, 32), (8, 16, 32))
                   if bm * bn <= 64 and bk * bn <= 256 and _within(bn, N, (8, 16, 32))
                   and bk <= key.get("G", 64) // 2]
        # the weight dequantised into fp32 panels, then the matmul's panel GEMM
        configs += [{"BM": bm, "BN": bn, "BK": bk, "acc_in_memory": False, "pack_b": True,
                     "num_threads": 1}
                    for bm, bn, bk in itertools.product((2, 4), (8, 16), (8, 16, 32))
                    if _within(bn, N, (8, 16))]
        return _enough_programs(configs, lambda c: -(-N // c["BN"]) * (
            -(-M // c["BM"]) if c["pack_b"] else 1), device)
    bms = bns = (32, 64, 128)
    tiles = [(bm, bn, t) for bm in bms for bn in bns
             for t in _work_group_sizes(device, (64, 128, 256)) if 4 <= bm * bn // t <= 64]
    configs = [{"BM": bm, "BN": bn, "DEQ": deq, "num_threads": t} for bm, bn, t in tiles
               for deq in DEQUANTISE if _within(bm, M, bms) and _within(bn, N, bns)]
    return _enough_programs(configs, lambda c: -(-M // c["BM"]) * -(-N // c["BN"]), device)


# ------------------------------------------------------- inputs and launches
def _rng(key):
    return np.random.default_rng(zlib.crc32(tuning_db.key_text(key).encode()))


@functools.lru_cache(maxsize=4)
def _inputs_cached(kernel, key_text, device_index):
    key = json.loads(key_text)
    rng = _rng(key)
    if kernel in ("matmul", "gemv"):
        M = key.get("M", 1)
        a = rng.standard_normal((M, key["K"]), dtype=np.float32)
        w_shape = (key["N"], key["K"]) if key["trans_b"] else (key["K"], key["N"])
        w = rng.standard_normal(w_shape, dtype=np.float32).astype(key.get("b_dtype", "float32"))
        return kdsl.tensor(a), kdsl.tensor(w)
    if kernel == "softmax":
        rows = 16
        return (kdsl.tensor(rng.standard_normal((rows, key["N"]), dtype=np.float32)),)
    if kernel in ("fp4_gemv", "fp4_gemm"):
        from kdsl_kernels import fp4
        M = key.get("M", 1)
        w = rng.standard_normal((key["N"], key["K"]), dtype=np.float32)
        packed = fp4.quantize(w, group_size=key["G"])
        return kdsl.tensor(rng.standard_normal((M, key["K"]), dtype=np.float32)), packed
    raise KeyError(kernel)


def inputs(kernel, key):
    """Random device inputs of the key's shape (memoised: a task times many configs on them)."""
    return _inputs_cached(kernel, tuning_db.key_text(key), kdsl.current_device().index)


def launch(kernel, key, config, operands=None):
    """One launch of `kernel` at `key` with `config`, through the library wrapper."""
    operands = operands if operands is not None else inputs(kernel, key)
    if kernel in ("matmul", "gemv"):
        from kdsl_kernels.matmul import matmul
        return matmul(*operands, trans_b=key["trans_b"], config=config)
    if kernel == "softmax":
        from kdsl_kernels.softmax import softmax
        return softmax(*operands, config=config)
    if kernel in ("fp4_gemv", "fp4_gemm"):
        from kdsl_kernels import fp4
        return fp4.linear(*operands, config=config)
    raise KeyError(kernel)


def trial(kernel, key, config):
    """In a child process: build and run one config once (see kdsl.autotuner.check_in_child)."""
    launch(kernel, key, config)


def default_config(kernel, key, device):
    """The config the library runs for `key` when nothing is tuned."""
    with tuning_db.defaults_only():
        if kernel == "matmul":
            from kdsl_kernels import configs
            return configs.matmul_config(key["M"], key["N"], key["K"], key["trans_b"], device,
                                         key.get("b_dtype"))
        if kernel == "gemv":
            from kdsl_kernels import configs
            return configs.gemv_config(key["N"], key["K"], key["trans_b"], device,
                                       key.get("b_dtype"))
        if kernel == "softmax":
            from kdsl_kernels.softmax import softmax_config
            return softmax_config(key["N"])
        if kernel == "fp4_gemv":
            from kdsl_kernels.fp4_kernels import gemv_default
            return gemv_default(device, key["K"])
        if kernel == "fp4_gemm":
            from kdsl_kernels.fp4_kernels import gemm_default
            return gemm_default(device, key["M"], key["N"], key["K"])
    raise KeyError(kernel)


class Tunable:
    """A library kernel the command line can tune."""

    def __init__(self, name, space, module, cold=False, optional=()):
        self.name = name
        self._space = space
        self.optional = optional      # form parameters (_limit, configs.tuned)
        self.module = module          # the library module it needs, for availability
        # timed with the caches flushed: its operands (a layer's weights) come
        # from memory in a model, once per step or chunk
        self.cold = cold

    def space(self, device, key, max_configs=MAX_CONFIGS):
        """The configs to time at `key` on `device`, the default first, then the nearest."""
        default = default_config(self.name, key, device)
        return _limit([default] + self._space(device, key), default, max_configs,
                      self.optional)

    def unavailable(self):
        """Why this kernel cannot be tuned here (its module fails to import), or None."""
        import importlib
        try:
            importlib.import_module(self.module)
        except Exception as error:          # a library module being written may fail to import
            return f"{self.module} does not import ({type(error).__name__}: {error})"
        return None


KERNELS = {t.name: t for t in [
    Tunable("matmul", matmul_space, "kdsl_kernels.matmul", cold=True),
    Tunable("gemv", gemv_space, "kdsl_kernels.matmul", cold=True, optional=RUNS),
    Tunable("softmax", softmax_space, "kdsl_kernels.softmax"),
    Tunable("fp4_gemv", fp4_gemv_space, "kdsl_kernels.fp4_kernels", cold=True,
            optional=GEMV_FORM_PARAMS),
    Tunable("fp4_gemm", fp4_gemm_space, "kdsl_kernels.fp4_kernels", cold=True),
]}
