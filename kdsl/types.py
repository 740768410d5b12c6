"""Type rules shared by the checker and the interpreter: promotion and results.

fp16 is a storage type: arithmetic on fp16 values happens in float32.
Python numbers are *weak*: `x * 2` keeps x's dtype, `i * 0.5` becomes float32.
"""
from . import language as kl


def arith_dtype(a, b):
    """The dtype an arithmetic operator computes in, for operand dtypes a and b."""
    if a.is_float or b.is_float:
        return kl.float32
    if kl.int64 in (a, b):
        return kl.int64
    if kl.uint32 in (a, b):
        return kl.uint32
    return kl.int32


def weak_dtype(value, other):
    """The dtype a Python number takes when combined with a value of dtype `other`."""
    if isinstance(value, bool):
        return kl.int1 if other.is_bool else other if other.is_int else other
    if isinstance(value, int):
        if other.is_float or other in (kl.int32, kl.uint32, kl.int64):
            return other
        return kl.int32
    return kl.float32


def python_dtype(value):
    """The dtype of a Python number on its own (as a kernel scalar)."""
    if isinstance(value, bool):
        return kl.int1
    if isinstance(value, int):
        return kl.int32 if -2**31 <= value < 2**31 else kl.int64
    return kl.float32


def reduce_dtype(op, dtype):
    """The dtype of kl.sum/max/min/argmax over elements of `dtype`."""
    if op in ("argmax", "argmin"):
        return kl.int32
    if dtype == kl.float16:
        return kl.float32
    if op == "sum" and dtype.is_int and dtype.bits < 32:
        return kl.int32
    return dtype


def broadcast_shapes(a, b):
    """numpy broadcasting of two shapes; None when they do not broadcast."""
    a, b = tuple(a), tuple(b)
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + a
    b = (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a, b):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            return None
    return tuple(out)
