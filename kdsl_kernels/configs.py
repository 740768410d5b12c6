"""Default launch configurations per device kind, used until a shape is tuned.

A CPU (PoCL) wants one work-item per work-group holding a register tile whose
columns are contiguous, so LLVM vectorises the unrolled FMAs; a GPU wants
many work-items sharing operand tiles through local memory.
"""
import kdsl


def _device():
    return kdsl.current_device()


def matmul_config(M, N, K, trans_b=False):
    dev = _device()
    if dev.is_cpu:
        return {"BM": 8, "BN": 32, "BK": 16, "num_threads": 1}
    return {"BM": 64, "BN": 64, "BK": 16, "num_threads": 64}


def gemv_config(N, K, trans_b=True):
    dev = _device()
    if dev.is_cpu:
        return {"BN": 4, "BK": 256, "num_threads": 16}
    return {"BN": 8, "BK": 256, "num_threads": 128}
