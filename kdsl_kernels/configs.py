"""Launch configurations: the device's tuned one, else a default per device kind.

`tuned(kernel, key, default)` reads the per-device tuning database that
`kdsl-autotune` fills: the config tuned for exactly this key, else the one for
the nearest tuned key, else `default`. The defaults below are what a device
runs before it is tuned. A CPU (PoCL) wants one work-item per work-group
holding a register tile whose columns are contiguous, so LLVM vectorises the
unrolled FMAs; a GPU wants many work-items sharing operand tiles through
local memory.
"""
import numpy as np

import kdsl
from kdsl import tuning_db


def tuned(kernel_name, key, default, device=None, optional=()):
    """The tuned config of `kernel_name` for `key` on `device`, else `default`.

    A config whose parameter names differ from the default's (tuned by an
    older version of the kernel) is ignored; names in `optional` (parameters
    some forms of the kernel take and others not) may differ. Returns a new
    dict each call.

    >>> config = tuned("gemv", {"N": 4096, "K": 4096, "trans_b": True},
    ...                {"BN": 1, "BK": 64, "num_threads": 1})
    >>> sorted(config)                  # the tuned values where the database has some
    ['BK', 'BN', 'num_threads']
    """
    config = tuning_db.database(device).best_config(kernel_name, key)
    if config is None or set(config) - set(optional) != set(default) - set(optional):
        return dict(default)
    return dict(config)


def weight_key(key, b_dtype):
    """`key` with the B operand's storage type where it is not fp32: fp16
    weights halve the bytes a GEMV reads and convert with vload_half runs, so
    the best config differs (PoCL: one row per work-item 1.5-3x faster than
    two for fp16 where two won for fp32), and a config tuned for one must
    not reach the other (keys with different fields never match)."""
    if b_dtype is not None and np.dtype(b_dtype) == np.float16:
        return dict(key, b_dtype="float16")
    return key


def matmul_config(M, N, K, trans_b=False, device=None, b_dtype=None):
    """The GEMM (M > 1) config: tuned for the key {M, N, K, trans_b} (plus
    b_dtype for fp16 weights, weight_key), else the default."""
    if kdsl.device.as_device(device).is_cpu and M >= 32:
        # B packed into contiguous panels first (pack_b), then 4 x 16 tiles
        # with 16-wide K steps: 151-188 GFLOP/s at 512^3-2048^3 and 112-141 at
        # M = 64-128 with 576- to 4096-wide weights, pack included, against
        # 50-116 for the tiles below reading B in place (B's rows at a
        # power-of-two stride fall out of the cache; PoCL 3.1, Zen 4,
        # .scratch/mm_pack_ab.py, 2026-12-07). At M = 16 the pack of a
        # 4096 x 4096 weight (7 ms) costs more than it saves.
        default = {"BM": 4, "BN": 16, "BK": 16, "num_threads": 1, "pack_b": True}
    elif kdsl.device.as_device(device).is_cpu and trans_b:
        # weights [N, K]: each row of the B tile is a run of K; an 8 x 8 tile
        # with 32-wide K steps ran 1.3-5x the 8 x 32 x 16 tile (38-58 GFLOP/s
        # against 9-36 at M = 16..128, SmolLM2's and 4096-wide shapes, PoCL 3.1)
        default = {"BM": 8, "BN": 8, "BK": 32, "num_threads": 1, "pack_b": False}
    elif kdsl.device.as_device(device).is_cpu:
        # 8 x 16 x 16, once the back end contracted products into FMAs:
        # replayed, 46-62 GFLOP/s at 256^3-1024^3 against 32-45 for the
        # previous 8 x 32 x 16 (PoCL 3.1, .scratch sweep, 2026-11-23)
        default = {"BM": 8, "BN": 16, "BK": 16, "num_threads": 1, "pack_b": False}
    else:
        # 64 x 64 tiles over 64 work-items (8 x 8 each), 32-wide K steps: with
        # kl.dot reading 4 k-steps per float4 from local memory, H100 4096^3
        # 32.2-32.4 TFLOP/s and 2048^3 31.0-31.2 against 29.3 and 28.4 for
        # 16-wide steps and 27-31.5 for 128 x 128 over 256 (.scratch/gpu_ab.py,
        # two alternated runs, 2026-12-07)
        default = {"BM": 64, "BN": 64, "BK": 32, "num_threads": 64, "pack_b": False}
    return tuned("matmul", weight_key({"M": M, "N": N, "K": K, "trans_b": bool(trans_b)}, b_dtype),
                 default, device)


def gemv_config(N, K, trans_b=True, device=None, b_dtype=None):
    """The GEMV (M == 1) config: tuned for the key {N, K, trans_b} (plus
    b_dtype for fp16 weights, weight_key), else the default."""
    if kdsl.device.as_device(device).is_cpu:
        # One work-item per row, 64-wide K steps: 12-16 GB/s fp32 at SmolLM2's
        # shapes against 8-10 for 16 work-items, 7 GB/s fp16 against 1.6 (PoCL 3.1).
        # 16 rows per program, taken in turn (one contiguous run of W). From
        # DRAM on the 2-core Zen 4 VM (PoCL 3.1): 4096 x 4096 43.2 against
        # 26.2 GB/s for a program per row, 11008 x 4096 47.1 against 26.8;
        # on the 16-core Xeon beside the H100 (PoCL 5) 92.4 and 95.7 against
        # 88.8 and 100.5, 1536 x 576 48.1 against 36.2. Runs sized by compute
        # unit (4 programs per unit) did as well on the VM and up to 16 %
        # worse on the Xeon (.scratch/s14/gemv32b.py, 2026-12-07)
        default = {"BN": 1, "BK": 64, "num_threads": 1, "T": 16}
    else:
        # H100 sweeps (bench/matmul.py --sweep, two runs): one row per work-group
        # over 256 work-items in 1024-wide K steps read 11008 x 4096 at 2.50 TB/s
        # (0.94 of the float4 copy measured beside it), against 0.76 for 8 rows
        # x 256 over 128; 2 rows x 512 lost to it in the same sweep
        default = {"BN": 1, "BK": 1024 if K >= 2048 else 256, "num_threads": 256}
    return tuned("gemv", weight_key({"N": N, "K": K, "trans_b": bool(trans_b)}, b_dtype), default,
                 device, optional=RUNS)


# A GEMV config's optional way of giving each program several row blocks:
# T blocks, or per_cu programs per compute unit (blocks_per_program)
RUNS = ("T", "per_cu")


def blocks_per_program(config, blocks, device):
    """How many of a launch's `blocks` (row blocks, tiles) each program takes
    in turn: config["T"], or as many as make config["per_cu"] programs per
    compute unit of `device` (one contiguous run each), else 1."""
    if config.get("T"):
        return config["T"]
    if config.get("per_cu"):
        return max(1, -(-blocks // (config["per_cu"] * device.compute_units)))
    return 1
