"""The numpy interpreter: runs a kernel's AST program by program, as the back end's oracle.

`KDSL_INTERPRET=1` or `kdsl.jit(interpret=True)` sends launches here:

    @kdsl.jit(interpret=True)
    def double(x_ptr, n, BLOCK: kl.constexpr):
        offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
        kl.store(x_ptr + offs, kl.load(x_ptr + offs, mask=offs < n) * 2, mask=offs < n)

    double[(kdsl.cdiv(n, 128),)](x, n, BLOCK=128)     # x: a kdsl tensor or a numpy array

The kernel is first checked (kdsl.checker), so interpret mode rejects what the
compiler rejects, with the same errors. Then the parsed kernel (kdsl.ast_nodes)
is walked directly, once per program of the 3-D grid (axis 0 fastest), each
block operation one whole-array numpy operation. Nothing else is shared with
the OpenCL back end but the type rules of kdsl.types, so each can be tested
against the other.

Values
  - Python int, float, bool, str, None, tuple and kl dtypes are constexprs:
    literals, `kl.constexpr` parameters and module-level names. An operation
    between two of them is Python's own (constant folding, Python's `//`).
    Python numbers are *weak*: beside a typed value they take the dtype that
    kdsl.types.weak_dtype gives (`x * 2` keeps x's dtype, `i * 0.5` is float32).
  - numpy scalars and arrays are typed scalars and blocks; their numpy dtype
    is their kl dtype. Block shapes are tuples of powers of two.
  - A Pointer is a kernel argument's memory (a flat host array) and an int64
    element offset, a scalar or a block.

Arguments: kdsl tensors are copied to host arrays once, before the first
program, and written back after the last, if stored to; C-contiguous numpy
arrays are used in place; the same object passed twice is one memory. Python
ints become int32 scalars (int64 beyond int32), floats float32, bools int1.

Semantics (the language's; the back end must match them)
  - fp16 is a storage type: a load from an fp16 pointer gives float32, a store
    to one rounds to nearest even, `x.to(kl.float16)` rounds and is typed
    float16, and any arithmetic on float16 values computes in float32.
  - Operators promote as kdsl.types.arith_dtype (C's integer promotion: 8-,
    16-bit and int1 operands compute in int32); `& | ^` of two int1 values
    stay int1; comparisons give int1; integer overflow wraps.
  - Integer `/` is float32 true division; integer `//` and `%` truncate
    toward zero as C (and Triton) do; float `%` is C's fmod; float `//` is an
    error, as in Triton. Shift counts are taken modulo the bit width, as
    OpenCL does; `~` of int1 is logical not.
  - exp, log, sqrt, ..., sigmoid, fma and `**` on floats are computed in
    float64 from float32 inputs and rounded once: the correctly rounded value
    the device approximates. kl.dot accumulates in float32 (int32 for ints).
  - kl.maximum/minimum and kl.max/min follow OpenCL's fmax/fmin: NaN loses.
  - Loads and stores check every unmasked or masked-on lane and raise
    OutOfBoundsError naming the line; masked-off lanes are never touched, and
    give `other` (0 by default) on a load.
  - `range`/`kl.range` loop counters are int32 runtime scalars;
    `kl.static_range` counters are Python ints (constexprs).
  - Programs run one after another, so a program sees the stores of the
    programs before it; num_threads does not change results and is ignored.

Errors the walk meets that the checker let through (an unknown name, a call
of something that is not a builtin or a kernel, a block used as an `if`
condition, a shape that is not a power of two, ...) are CompileErrors
pointing at the source too.
"""
import difflib
import functools
import inspect
import math
import operator

import numpy as np

from . import ast_nodes as A
from . import language as kl
from . import types as T
from .checker import check
from .errors import CompileError, OutOfBoundsError
from .jit import JITFunction


def interpret(jit_fn, grid, values, num_threads=None):
    """Run `jit_fn` on numpy over `grid` (3 ints), with arguments bound by JITFunction.bind."""
    check(jit_fn, values, num_threads)
    buffers = {}
    args = {name: _argument(name, values[name], name in jit_fn.constexpr_names, buffers)
            for name in jit_fn.arg_names}
    interpreter = _Interpreter(grid)
    # Wrapping integers and IEEE infinities are the semantics, not accidents.
    with np.errstate(all="ignore"):
        for z in range(grid[2]):
            for y in range(grid[1]):
                for x in range(grid[0]):
                    interpreter.run_program(jit_fn, (x, y, z), args)
    for buffer in buffers.values():
        buffer.write_back()


# --------------------------------------------------------------------- values
class Pointer:
    """A pointer, or a block of pointers, into a kernel argument's memory."""

    __slots__ = ("buffer", "offset")

    def __init__(self, buffer, offset):
        self.buffer = buffer
        self.offset = offset          # np.int64 scalar or int64 array

    @property
    def shape(self):
        return np.shape(self.offset)

    def moved(self, delta, sign):
        """This pointer moved by `sign * delta` elements."""
        if not _is_integer(delta):
            raise _Error(f"pointers move by integers, not by {_describe(delta)}")
        _broadcast_shapes("pointer arithmetic", self.shape, np.shape(delta))
        moved = self.offset + sign * np.asarray(delta).astype(np.int64)
        return Pointer(self.buffer, _scalar_or_block(moved))

    def __repr__(self):
        return f"<pointer into {self.buffer.name}, offsets of shape {self.shape}>"


class _Buffer:
    """A kernel argument's memory as one flat host array."""

    def __init__(self, name, source):
        self.name = name
        self.source = source
        self.stored = False
        self.in_place = isinstance(source, np.ndarray) and source.flags.c_contiguous
        if self.in_place:
            self.flat = source.reshape(-1)
        elif isinstance(source, np.ndarray):
            self.flat = source.flatten()
        else:
            # A tensor view: the kernel indexes its span with the view's strides.
            self.flat = source.read_span()             # a fresh host copy

    def write_back(self):
        """Copy stored values back to a tensor or a non-contiguous array."""
        if not self.stored or self.in_place:
            return
        if isinstance(self.source, np.ndarray):
            self.source[...] = self.flat.reshape(self.source.shape)
        else:
            self.source.write_span(self.flat)


def _argument(name, value, is_constexpr, buffers):
    """A launch argument as the kernel sees it."""
    if is_constexpr:
        return _constexpr(value)
    if isinstance(value, np.ndarray) or hasattr(value, "copy_from"):
        if id(value) not in buffers:
            buffers[id(value)] = _Buffer(name, value)
        return Pointer(buffers[id(value)], np.int64(0))
    if isinstance(value, (np.int64, np.float64)):   # what numpy arithmetic hands out
        value = value.item()
    return value if _is_typed(value) else _typed(value)


def _constexpr(value):
    """A compile-time value as a plain Python one (numpy scalars and kl.constexpr unwrapped)."""
    if isinstance(value, kl.constexpr):
        return value.value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _is_typed(value):
    return isinstance(value, (np.ndarray, np.generic))


def _is_number(value):
    """A weak Python number (a literal or a constexpr)."""
    return isinstance(value, (bool, int, float))


def _is_block(value):
    return isinstance(value, np.ndarray) and value.ndim > 0


def _is_integer(value):
    if _is_typed(value):
        return value.dtype.kind in "iu"
    return isinstance(value, int) and not isinstance(value, bool)


def _dtype_of(value):
    return kl.from_numpy(value.dtype)


def _typed(number):
    """A Python number as a typed scalar of its natural dtype (int32, float32, int1)."""
    return T.python_dtype(number).np.type(number)


def _scalar_or_block(array):
    """numpy's 0-d arrays as scalars, so that a scalar is always an np.generic."""
    if isinstance(array, np.ndarray) and array.ndim == 0:
        return array[()]
    return array


def _cast(value, dtype):
    """A typed value or weak number converted to `dtype` (C conversion; integers wrap)."""
    if _is_typed(value):
        return value if value.dtype == dtype.np else value.astype(dtype.np)
    return np.asarray(value).astype(dtype.np)[()]


def _as_typed(value):
    """A typed scalar or block; a literal takes its natural dtype (float32, int32, int1)."""
    if _is_typed(value):
        return value
    if not _is_number(value):
        raise _Error(f"expected a number or a block, got {_describe(value)}")
    return _typed(value)


def _convert(value, dtype):
    """`value.to(dtype)`: a number, typed scalar or block converted to `dtype`."""
    return _cast(_as_typed(value), dtype)


def _describe(value):
    """A short phrase for a value in an error message."""
    if isinstance(value, Pointer):
        return f"a block of pointers of shape {value.shape}" if value.shape else "a pointer"
    if _is_typed(value):
        name = _dtype_of(value).name
        article = "an" if name[0] in "aeiou" else "a"
        if _is_block(value):
            return f"{article} {name} block of shape {value.shape}"
        return f"{article} {name} scalar"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) < 40 else text[:37] + '...'}"


def _broadcast_to(value, shape):
    """`value` as an array of `shape` (a read-only view where it must grow)."""
    if np.shape(value) == shape:
        return np.asarray(value)
    return np.broadcast_to(value, shape)


def _broadcast_shapes(what, *shapes):
    result = ()
    for shape in shapes:
        combined = T.broadcast_shapes(result, shape)
        if combined is None:
            raise _Error(f"{what}: shapes {' and '.join(str(tuple(s)) for s in shapes)} "
                         "do not broadcast")
        result = combined
    return result


# ------------------------------------------------------------------- dtypes
def _operand_dtypes(values):
    """Each operand's dtype; a weak Python number takes the dtype it has beside the others."""
    for value in values:
        if isinstance(value, Pointer) or not (_is_typed(value) or _is_number(value)):
            raise _Error(f"expected a number or a block, got {_describe(value)}")
    typed = [_dtype_of(v) for v in values if _is_typed(v)]
    anchor = functools.reduce(T.arith_dtype, typed) if typed else None
    return [_dtype_of(v) if _is_typed(v)
            else T.python_dtype(v) if anchor is None else T.weak_dtype(v, anchor)
            for v in values]


def _compute_dtype(dtypes):
    """The dtype arithmetic on operands of `dtypes` computes in (fp16 and small ints promote)."""
    return functools.reduce(T.arith_dtype, dtypes, dtypes[0])


def _kl_dtype(dtype):
    """A kl dtype from a kl dtype or anything numpy takes as a dtype."""
    if isinstance(dtype, kl.dtype):
        return dtype
    try:
        found = kl.from_numpy(dtype)
    except TypeError:
        found = None
    if found is None:
        raise _Error(f"{_describe(dtype)} is not a kernel dtype; use kl.float32, kl.float16, "
                     "kl.int32, kl.uint32, kl.int8, kl.uint8 or kl.int1")
    return found


# ---------------------------------------------------------------- operators
_ARITHMETIC = {"+": np.add, "-": np.subtract, "*": np.multiply}
_COMPARISONS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
                "==": np.equal, "!=": np.not_equal}
_BITWISE = {"&": np.bitwise_and, "|": np.bitwise_or, "^": np.bitwise_xor}
_SHIFTS = {"<<": np.left_shift, ">>": np.right_shift}
_PYTHON_OPERATORS = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow, "@": operator.matmul,
    "&": operator.and_, "|": operator.or_, "^": operator.xor, "<<": operator.lshift,
    ">>": operator.rshift, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


def _binary(op, a, b):
    """`a op b` for any two kernel values."""
    if isinstance(a, Pointer) or isinstance(b, Pointer):
        return _pointer_arithmetic(op, a, b)
    if not _is_typed(a) and not _is_typed(b):
        return _python_binary(op, a, b)
    if op == "@":
        return _dot(a, b)
    if op == "**":
        return _power(a, b)
    dtypes = _operand_dtypes([a, b])
    if op in _BITWISE and all(d.is_bool for d in dtypes):
        dtype = kl.int1
    else:
        dtype = _compute_dtype(dtypes)
    if np.shape(a) != np.shape(b):
        _broadcast_shapes(f"'{op}'", np.shape(a), np.shape(b))
    return _scalar_or_block(_apply(op, _cast(a, dtype), _cast(b, dtype), dtype))


def _apply(op, x, y, dtype):
    """The numpy operation for `op` on operands already converted to `dtype`."""
    if op in _ARITHMETIC:
        return _ARITHMETIC[op](x, y)
    if op in _COMPARISONS:
        return _COMPARISONS[op](x, y)
    if op == "/":
        return np.true_divide(x.astype(np.float32), y.astype(np.float32))
    if op == "%":
        return np.fmod(x, y)          # C's remainder: the sign of the dividend
    if dtype.is_float:
        raise _Error(f"'{op}' needs integer operands, got {dtype.name}"
                     + ("; use '/' for floats" if op == "//" else ""))
    if op == "//":
        return _c_quotient(x, y, dtype)
    if op in _SHIFTS:
        # OpenCL uses only the low log2(bits) bits of a shift count.
        return _SHIFTS[op](x, y & (dtype.bits - 1))
    return _BITWISE[op](x, y)


def _c_quotient(x, y, dtype):
    """Integer division truncating toward zero, as C's `/`."""
    if dtype.kind == "u":
        return x // y
    return (x - np.fmod(x, y)) // y      # exact: the numerator is a multiple of y


def _power(base, exponent):
    """`**`: integers to a non-negative literal power stay integers; the rest is float32 pow."""
    if _is_typed(base) and _is_integer(base) and _is_integer(exponent) \
            and not _is_typed(exponent) and exponent >= 0:
        dtype = _compute_dtype([_dtype_of(base)])
        return _scalar_or_block(np.power(_cast(base, dtype), dtype.np.type(exponent)))
    _operand_dtypes([base, exponent])
    _broadcast_shapes("'**'", np.shape(base), np.shape(exponent))
    return _in_float64(np.power, _cast(base, kl.float32), _cast(exponent, kl.float32))


def _python_binary(op, a, b):
    """An operator on two constexprs: Python's own meaning (constant folding)."""
    try:
        return _PYTHON_OPERATORS[op](a, b)
    except (TypeError, ValueError, ZeroDivisionError, OverflowError) as exc:
        raise _Error(f"cannot compute {a!r} {op} {b!r}: {exc}") from None


def _pointer_arithmetic(op, a, b):
    if op == "+" and not isinstance(b, Pointer):
        return a.moved(b, 1)
    if op == "+" and not isinstance(a, Pointer):
        return b.moved(a, 1)
    if op == "-" and not isinstance(b, Pointer):
        return a.moved(b, -1)
    raise _Error(f"'{op}' is not defined on pointers; a pointer only moves by integers "
                 "(ptr + offsets, ptr - n)")


def _unary(op, value):
    """`-x`, `+x`, `~x`."""
    if not _is_typed(value):
        if not _is_number(value):
            raise _Error(f"cannot apply unary '{op}' to {_describe(value)}")
        return {"-": operator.neg, "+": operator.pos, "~": operator.invert}[op](value)
    dtype = _dtype_of(value)
    if op == "~" and dtype.is_bool:
        return np.logical_not(value)
    if op == "~" and dtype.is_float:
        raise _Error(f"'~' needs an integer operand, got {dtype.name}")
    promoted = _cast(value, _compute_dtype([dtype]))
    return {"-": np.negative, "+": np.positive, "~": np.invert}[op](promoted)


def _truth(value):
    """The truth of an `if`/`while` condition, `and`/`or`/`not` operand: scalars only."""
    if _is_block(value):
        raise _Error(f"a condition must be a scalar, but this is {_describe(value)}; "
                     "select per lane with kl.where or a mask, or reduce it (kl.max, kl.sum)")
    if isinstance(value, Pointer):
        raise _Error("a pointer cannot be a condition")
    return bool(value)


def _in_float64(fn, *args):
    """fn computed in float64 and rounded once to float32."""
    return _scalar_or_block(fn(*(np.asarray(a, np.float64) for a in args)).astype(np.float32))


# ---------------------------------------------------------------- builtins
def _arange(start, end):
    for bound in (start, end):
        if not _is_integer(bound) or _is_typed(bound):
            raise _Error(f"kl.arange bounds must be compile-time ints, got {_describe(bound)}")
    length = end - start
    if length <= 0 or length & (length - 1):
        hint = 1 << max(length - 1, 0).bit_length()
        raise _Error(f"kl.arange({start}, {end}) has {length} elements, but a block's length "
                     f"must be a power of two; use {hint} and a mask")
    return np.arange(start, end, dtype=np.int32)


def _block_shape(shape):
    """A constexpr shape (an int or a tuple of ints) as a tuple of powers of two."""
    dims = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,)
    for dim in dims:
        if not _is_integer(dim) or _is_typed(dim) or dim < 1 or dim & (dim - 1):
            raise _Error(f"a block shape is a tuple of compile-time powers of two, got {shape!r}")
    return dims


def _zeros(shape, dtype):
    return _scalar_or_block(np.zeros(_block_shape(shape), _kl_dtype(dtype).np))


def _full(shape, value, dtype):
    if _is_block(value):
        raise _Error(f"kl.full fills with a scalar, got {_describe(value)}")
    return _scalar_or_block(np.full(_block_shape(shape), _convert(value, _kl_dtype(dtype))))


def _expect_pointer(value, what):
    if not isinstance(value, Pointer):
        raise _Error(f"{what} needs a pointer (a tensor argument plus offsets), "
                     f"got {_describe(value)}")
    return value


def _mask_of(mask, what):
    """A load's or store's mask: None, or an int1 scalar or block."""
    if mask is None or (_is_typed(mask) and mask.dtype == np.bool_):
        return mask
    if isinstance(mask, bool):
        return np.bool_(mask)
    raise _Error(f"{what}: the mask must be int1 (a comparison such as offs < n), "
                 f"got {_describe(mask)}")


def _check_bounds(action, buffer, offsets):
    size = buffer.flat.size
    if offsets.size and (offsets.min() < 0 or offsets.max() >= size):
        bad = offsets[(offsets < 0) | (offsets >= size)]
        raise _OutOfBounds(f"kl.{action} out of bounds: index {int(bad.flat[0])} of "
                           f"'{buffer.name}', a tensor of {size} elements")


def _load(pointer, mask=None, other=None):
    pointer = _expect_pointer(pointer, "kl.load")
    mask = _mask_of(mask, "kl.load")
    shape = _broadcast_shapes("kl.load", pointer.shape, np.shape(mask), np.shape(other))
    offsets = _broadcast_to(pointer.offset, shape)
    flat = pointer.buffer.flat
    dtype = kl.float32 if flat.dtype == np.float16 else kl.from_numpy(flat.dtype)
    if mask is None:
        _check_bounds("load", pointer.buffer, offsets)
        return _scalar_or_block(flat[offsets].astype(dtype.np))
    mask = _broadcast_to(mask, shape)
    on = offsets[mask]
    _check_bounds("load", pointer.buffer, on)
    out = np.array(_broadcast_to(_convert(0 if other is None else other, dtype), shape))
    out[mask] = flat[on]
    return _scalar_or_block(out)


def _store(pointer, value, mask=None):
    pointer = _expect_pointer(pointer, "kl.store")
    mask = _mask_of(mask, "kl.store")
    shape = _broadcast_shapes("kl.store", pointer.shape, np.shape(mask))
    buffer = pointer.buffer
    if not buffer.flat.flags.writeable:
        raise _Error(f"kl.store: '{buffer.name}' is a read-only numpy array")
    values = _convert(value, kl.from_numpy(buffer.flat.dtype))
    if T.broadcast_shapes(np.shape(values), shape) != shape:
        raise _Error(f"kl.store: {_describe(value)} cannot be stored through pointers "
                     f"of shape {shape}")
    values = _broadcast_to(values, shape)
    offsets = _broadcast_to(pointer.offset, shape)
    if mask is not None:
        mask = _broadcast_to(mask, shape)
        offsets, values = offsets[mask], values[mask]
    _check_bounds("store", buffer, offsets)
    buffer.flat[offsets] = values
    buffer.stored = True


def _dot(a, b, acc=None):
    for operand in (a, b):
        if not _is_typed(operand) or np.ndim(operand) != 2:
            raise _Error(f"kl.dot multiplies 2-D blocks, got {_describe(operand)}")
    if a.shape[1] != b.shape[0]:
        raise _Error(f"kl.dot: inner dimensions differ: {a.shape} @ {b.shape}")
    dtypes = _operand_dtypes([a, b])
    dtype = kl.float32 if any(d.is_float for d in dtypes) else kl.int32
    product = np.matmul(_cast(a, dtype), _cast(b, dtype))
    if acc is None:
        return product
    if np.shape(acc) != product.shape:
        raise _Error(f"kl.dot: the accumulator's shape {np.shape(acc)} is not the "
                     f"product's {product.shape}")
    return _binary("+", acc, product)


def _trans(x, *dims):
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    if not _is_block(x):
        raise _Error(f"kl.trans needs a block, got {_describe(x)}")
    if not dims and x.ndim != 2:
        raise _Error(f"kl.trans of a {x.ndim}-D block needs a permutation: kl.trans(x, (2, 0, 1))")
    if dims and sorted(dims) != list(range(x.ndim)):
        raise _Error(f"kl.trans: {dims} is not a permutation of the axes of a {x.ndim}-D block")
    return np.transpose(x, dims or None)


def _reshape(x, shape):
    shape = _block_shape(shape)
    if math.prod(shape) != np.size(x):
        raise _Error(f"kl.reshape: {_describe(x)} has {np.size(x)} elements, "
                     f"shape {shape} has {math.prod(shape)}")
    return _scalar_or_block(np.reshape(x, shape))


def _reduction_input(x, axis, what):
    """The checked block and axis of a reduction."""
    if not _is_typed(x):
        raise _Error(f"{what} needs a block, got {_describe(x)}")
    if axis is None:
        return x, None
    if not _is_integer(axis) or _is_typed(axis) or not -x.ndim <= axis < x.ndim:
        raise _Error(f"{what}: axis must be a compile-time int below {x.ndim}, got {axis!r}")
    return x, axis % x.ndim


def _sum(x, axis=None, keep_dims=False):
    x, axis = _reduction_input(x, axis, "kl.sum")
    dtype = T.reduce_dtype("sum", _dtype_of(x))
    return _scalar_or_block(np.sum(x, axis=axis, dtype=dtype.np, keepdims=keep_dims))


def _extremum(ufunc, name):
    def reduce(x, axis=None, keep_dims=False):
        x, axis = _reduction_input(x, axis, f"kl.{name}")
        dtype = T.reduce_dtype(name, _dtype_of(x))
        return _scalar_or_block(ufunc.reduce(_cast(x, dtype), axis=axis, keepdims=keep_dims))
    return reduce


def _arg_extremum(numpy_fn, name):
    def reduce(x, axis, keep_dims=False):
        x, axis = _reduction_input(x, axis, f"kl.{name}")
        return _scalar_or_block(numpy_fn(x, axis=axis, keepdims=keep_dims).astype(np.int32))
    return reduce


def _where(condition, x, y):
    condition = _mask_of(condition, "kl.where")
    dtypes = _operand_dtypes([x, y])
    dtype = dtypes[0] if dtypes[0] is dtypes[1] else _compute_dtype(dtypes)
    _broadcast_shapes("kl.where", np.shape(condition), np.shape(x), np.shape(y))
    return _scalar_or_block(np.where(condition, _cast(x, dtype), _cast(y, dtype)))


def _float_math(fn):
    """A float32 elementwise function: inputs to float32, computed in float64, rounded once."""
    def apply(x):
        _operand_dtypes([x])
        return _in_float64(fn, _cast(x, kl.float32))
    return apply


def _abs(x):
    dtype = _compute_dtype(_operand_dtypes([x]))
    return _scalar_or_block(np.abs(_cast(x, dtype)))


def _elementwise_pair(fn, name):
    def apply(x, y):
        dtype = _compute_dtype(_operand_dtypes([x, y]))
        _broadcast_shapes(f"kl.{name}", np.shape(x), np.shape(y))
        return _scalar_or_block(fn(_cast(x, dtype), _cast(y, dtype)))
    return apply


def _fma(x, y, z):
    dtype = _compute_dtype(_operand_dtypes([x, y, z]))
    _broadcast_shapes("kl.fma", np.shape(x), np.shape(y), np.shape(z))
    x, y, z = (_cast(v, dtype) for v in (x, y, z))
    if dtype.is_float:
        return _in_float64(lambda a, b, c: a * b + c, x, y, z)   # float32 a*b is exact in float64
    return _scalar_or_block(x * y + z)


def _multiple_of(x, n):
    return x


def _max_contiguous(x, n):
    return x


def _cdiv(a, b):
    if not _is_typed(a) and not _is_typed(b):
        return kl.cdiv(a, b)
    return _binary("//", _binary("+", a, _binary("-", b, 1)), b)


def _to(value, dtype, bitcast=False):
    """`x.to(dtype)`: a conversion, or with bitcast=True a reinterpretation of the bits."""
    dtype = _kl_dtype(dtype)
    if not bitcast:
        return _convert(value, dtype)
    source = _as_typed(value)
    source_dtype = _dtype_of(source)
    if source_dtype.bits != dtype.bits:
        raise _Error(f"a bitcast needs types of one size: {source_dtype.name} has "
                     f"{source_dtype.bits} bits, {dtype.name} {dtype.bits}")
    return _scalar_or_block(np.asarray(source).view(dtype.np))


def _inline_asm(*args, **kwargs):
    raise _Error("kl.inline_asm_elementwise(): the interpreter cannot run device assembly; "
                 "test this form of the kernel on a device that takes it (NVIDIA's OpenCL), "
                 "and its portable form here")


def _loop_only(*args):
    raise _Error("range(), kl.range() and kl.static_range() are only for loops: "
                 "for i in range(...)")


_BUILTINS = {
    kl.arange: _arange, kl.zeros: _zeros, kl.full: _full, kl.load: _load, kl.store: _store,
    kl.dot: _dot, kl.trans: _trans, kl.reshape: _reshape, kl.sum: _sum,
    kl.max: _extremum(np.fmax, "max"), kl.min: _extremum(np.fmin, "min"),
    kl.argmax: _arg_extremum(np.argmax, "argmax"), kl.argmin: _arg_extremum(np.argmin, "argmin"),
    kl.where: _where, kl.exp: _float_math(np.exp), kl.exp2: _float_math(np.exp2),
    kl.log: _float_math(np.log), kl.log2: _float_math(np.log2),
    kl.sqrt: _float_math(np.sqrt), kl.rsqrt: _float_math(lambda x: 1 / np.sqrt(x)),
    kl.sin: _float_math(np.sin), kl.cos: _float_math(np.cos),
    kl.sigmoid: _float_math(lambda x: 1 / (1 + np.exp(-x))), kl.abs: _abs,
    kl.maximum: _elementwise_pair(np.fmax, "maximum"),
    kl.minimum: _elementwise_pair(np.fmin, "minimum"),
    kl.fma: _fma, kl.multiple_of: _multiple_of, kl.max_contiguous: _max_contiguous, kl.cdiv: _cdiv,
    kl.inline_asm_elementwise: _inline_asm,
    kl.range: _loop_only, kl.static_range: _loop_only, range: _loop_only,
}

# Python builtins a kernel may call; on runtime values they mean the kernel's own.
_PYTHON_BUILTINS = {"range": range, "float": float, "int": int, "bool": bool,
                    "min": min, "max": max, "abs": abs, "len": len}
_CONVERSIONS = {float: kl.float32, int: kl.int32, bool: kl.int1}
_LOOP_RANGES = (range, kl.range, kl.static_range)


def _python_builtin(fn, args, kwargs):
    """A Python builtin: Python's own on constexprs, the kernel builtin's on runtime values."""
    if all(not _is_typed(a) and not isinstance(a, Pointer) for a in args):
        try:
            return fn(*args, **kwargs)
        except (TypeError, ValueError, OverflowError) as exc:
            raise _Error(f"{fn.__name__}(): {exc}") from None
    if fn in _CONVERSIONS and len(args) == 1 and not kwargs:
        return _convert(args[0], _CONVERSIONS[fn])
    if fn in (min, max) and len(args) == 2 and not kwargs:
        return _BUILTINS[kl.minimum if fn is min else kl.maximum](*args)
    if fn is abs and len(args) == 1:
        return _abs(args[0])
    raise _Error(f"{fn.__name__}() takes compile-time values here; for runtime values use "
                 "the kl builtins (kl.maximum, kl.sum, x.to(...))")


@functools.lru_cache(maxsize=None)
def _signature(fn):
    return inspect.signature(fn)


def _call_builtin(name, impl, args, kwargs):
    """Call a builtin's implementation, reporting a bad argument list as the kernel's error."""
    try:
        return impl(*args, **kwargs)
    except TypeError:
        try:
            _signature(impl).bind(*args, **kwargs)
        except TypeError as exc:
            raise _Error(f"{name}(): {exc}") from None
        raise


# ------------------------------------------------------------ control flow
class _Error(Exception):
    """An error in the kernel found while running it; the evaluator adds the position."""

    def __init__(self, message, node=None):
        super().__init__(message)
        self.node = node


class _OutOfBounds(_Error):
    """A load or store outside its tensor."""


class _Break(Exception):
    pass


class _Continue(_Break):
    pass


class _Return(Exception):
    def __init__(self, value):
        self.value = value


class _Frame:
    """One running kernel or inlined helper: its AST, its variables and its module's names."""

    __slots__ = ("function", "names", "globals")

    def __init__(self, function, names, module_names):
        self.function = function
        self.names = names
        self.globals = module_names


def _source_name(node):
    """The dotted name a call was written with, for messages."""
    if isinstance(node, A.Name):
        return node.id
    if isinstance(node, A.Attribute):
        return f"{_source_name(node.value)}.{node.attr}"
    return "this expression"


# ------------------------------------------------------------- the walker
class _Interpreter:
    """Walks kernel ASTs for one launch: statements executed, expressions evaluated."""

    def __init__(self, grid):
        self.grid = grid
        self.pid = (0, 0, 0)
        self.calls = []               # the kernels being run, innermost last
        self._module_names = {}       # JITFunction -> its globals, read once per launch
        self._builtins = dict(_BUILTINS)
        self._builtins[kl.program_id] = self._program_id
        self._builtins[kl.num_programs] = self._num_programs
        self._evaluators = {
            A.Name: self._name, A.Constant: lambda node, frame: node.value,
            A.Attribute: self._attribute, A.Call: self._call, A.Subscript: self._subscript,
            A.BinOp: self._binop, A.Compare: self._binop, A.UnaryOp: self._unaryop,
            A.BoolOp: self._boolop, A.IfExp: self._ifexp, A.Tuple: self._tuple,
        }
        self._executors = {
            A.Assign: self._assign, A.AugAssign: self._augassign, A.ExprStmt: self._expr_stmt,
            A.Return: self._return, A.If: self._if, A.For: self._for, A.While: self._while,
            A.Break: self._break, A.Continue: self._continue, A.Pass: lambda stmt, frame: None,
        }

    def run_program(self, jit_fn, pid, args):
        self.pid = pid
        self._run(jit_fn, dict(args))

    def _run(self, jit_fn, names):
        """Run a kernel's body with its parameters bound to `names`; returns its return value."""
        if jit_fn not in self._module_names:
            self._module_names[jit_fn] = jit_fn.globals
        frame = _Frame(jit_fn.ast, names, self._module_names[jit_fn])
        self.calls.append(jit_fn)
        try:
            self._exec_body(frame.function.body, frame)
        except _Return as ret:
            return ret.value
        finally:
            self.calls.pop()
        return None

    def _positioned(self, exc, node, frame):
        """The user-facing error for `exc`, raised while running `node`."""
        node = exc.node or node
        function = frame.function
        source = function.source_line(node.line)
        if isinstance(exc, _OutOfBounds):
            text = f"{function.filename}:{node.line}:{node.col}: {exc} (program {self.pid})"
            return OutOfBoundsError(text + (f"\n    {source.strip()}" if source else ""))
        return CompileError(str(exc), function.filename, node.line, node.col, source)

    # ---- statements
    def _exec_body(self, body, frame):
        for stmt in body:
            try:
                self._executors[type(stmt)](stmt, frame)
            except _Error as exc:
                raise self._positioned(exc, stmt, frame) from None

    def _assign(self, stmt, frame):
        value = self.eval(stmt.value, frame)
        if not stmt.unpack:
            frame.names[stmt.targets[0].id] = value
            return
        if not isinstance(value, tuple) or len(value) != len(stmt.targets):
            raise _Error(f"cannot unpack {_describe(value)} into {len(stmt.targets)} names",
                         stmt.value)
        for target, item in zip(stmt.targets, value):
            frame.names[target.id] = item

    def _augassign(self, stmt, frame):
        current = self._name(stmt.target, frame)
        frame.names[stmt.target.id] = _binary(stmt.op, current, self.eval(stmt.value, frame))

    def _expr_stmt(self, stmt, frame):
        self.eval(stmt.value, frame)

    def _return(self, stmt, frame):
        raise _Return(None if stmt.value is None else self.eval(stmt.value, frame))

    def _if(self, stmt, frame):
        taken = self._condition(stmt.cond, frame)
        self._exec_body(stmt.body if taken else stmt.orelse, frame)

    def _for(self, stmt, frame):
        fn, bounds = self._loop_range(stmt.iter, frame)
        static = fn is kl.static_range
        counter = (lambda i: i) if static else self._counter_dtype(bounds).np.type
        values = [self._loop_bound(b, static, stmt.iter) for b in bounds]
        if len(values) == 3 and values[2] == 0:
            raise _Error("a range's step cannot be 0", stmt.iter)
        for i in range(*values):
            frame.names[stmt.var] = counter(i)
            try:
                self._exec_body(stmt.body, frame)
            except _Continue:
                continue
            except _Break:
                break

    def _loop_range(self, node, frame):
        """The range function and the bounds a for loop iterates over."""
        fn = self.eval(node.func, frame) if isinstance(node, A.Call) else None
        if not any(fn is r for r in _LOOP_RANGES):
            raise _Error("a for loop iterates over range(...), kl.range(...) or "
                         "kl.static_range(...)", node)
        if node.keywords or not 1 <= len(node.args) <= 3:
            raise _Error(f"{_source_name(node.func)}() takes 1 to 3 positional bounds: "
                         "(stop), (start, stop) or (start, stop, step)", node)
        return fn, [self.eval(arg, frame) for arg in node.args]

    @staticmethod
    def _counter_dtype(bounds):
        """A runtime loop counter's dtype: int32, or what typed bounds promote to."""
        dtype = kl.int32
        for bound in bounds:
            if _is_typed(bound) and _is_integer(bound):
                dtype = T.arith_dtype(dtype, _dtype_of(bound))
        return dtype

    @staticmethod
    def _loop_bound(bound, static, node):
        if static and _is_typed(bound):
            raise _Error("kl.static_range bounds must be compile-time ints; use range() for "
                         "runtime bounds", node)
        if not _is_integer(bound) or _is_block(bound):
            raise _Error(f"loop bounds must be integer scalars, got {_describe(bound)}", node)
        return int(bound)

    def _while(self, stmt, frame):
        while self._condition(stmt.cond, frame):
            try:
                self._exec_body(stmt.body, frame)
            except _Continue:
                continue
            except _Break:
                break

    def _break(self, stmt, frame):
        raise _Break()

    def _continue(self, stmt, frame):
        raise _Continue()

    def _condition(self, node, frame):
        value = self.eval(node, frame)
        try:
            return _truth(value)
        except _Error as exc:
            raise self._positioned(exc, node, frame) from None

    # ---- expressions
    def eval(self, node, frame):
        try:
            return self._evaluators[type(node)](node, frame)
        except _Error as exc:
            raise self._positioned(exc, node, frame) from None

    def _name(self, node, frame):
        if node.id in frame.names:
            return frame.names[node.id]
        if node.id in frame.globals:
            return _constexpr(frame.globals[node.id])
        if node.id in _PYTHON_BUILTINS:
            return _PYTHON_BUILTINS[node.id]
        known = list(frame.names) + list(frame.globals) + list(_PYTHON_BUILTINS)
        close = difflib.get_close_matches(node.id, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise _Error(f"unknown name '{node.id}'{hint}")

    def _attribute(self, node, frame):
        value = self.eval(node.value, frame)
        if isinstance(value, Pointer) and node.attr == "shape":
            return value.shape
        if _is_typed(value):
            if node.attr == "dtype":
                return _dtype_of(value)
            if node.attr == "shape":
                return np.shape(value)
            if node.attr == "to":
                return functools.partial(_to, value)
            raise _Error(f"{_describe(value)} has no attribute '{node.attr}'; values have "
                         ".dtype, .shape and .to(dtype)")
        if isinstance(value, Pointer):
            raise _Error(f"a pointer has no attribute '{node.attr}'; it has .shape")
        try:
            return _constexpr(getattr(value, node.attr))
        except AttributeError:
            raise _Error(f"{_describe(value)} has no attribute '{node.attr}'") from None

    def _call(self, node, frame):
        fn = self.eval(node.func, frame)
        args = [self.eval(arg, frame) for arg in node.args]
        kwargs = {kw.name: self.eval(kw.value, frame) for kw in node.keywords}
        name = _source_name(node.func)
        if isinstance(fn, JITFunction):
            return self._inline(fn, args, kwargs)
        if isinstance(fn, functools.partial) and fn.func is _to:
            return _call_builtin(name, _to, [*fn.args, *args], kwargs)
        if not callable(fn):
            raise _Error(f"'{name}' is {_describe(fn)}, which cannot be called")
        if fn in self._builtins:
            return _call_builtin(name, self._builtins[fn], args, kwargs)
        if fn in _PYTHON_BUILTINS.values():
            return _python_builtin(fn, args, kwargs)
        if getattr(fn, "__module__", None) == "math" and all(map(_is_number, args)):
            return _python_builtin(fn, args, kwargs)
        raise _Error(f"'{name}' is not a kl builtin or a @kdsl.jit function, so a kernel "
                     "cannot call it; decorate it with @kdsl.jit to inline it")

    def _inline(self, callee, args, kwargs):
        """A call of another @kdsl.jit function: its body run with the arguments bound."""
        if callee in self.calls:
            raise _Error(f"'{callee.__name__}' calls itself; kernels cannot recurse")
        try:
            bound = callee.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise _Error(f"{callee.__name__}(): {exc}") from None
        bound.apply_defaults()
        names = dict(bound.arguments)
        for name in callee.constexpr_names:
            if _is_typed(names[name]) or isinstance(names[name], Pointer):
                raise _Error(f"'{name}' of {callee.__name__} is a kl.constexpr, so it needs a "
                             f"compile-time value, not {_describe(names[name])}")
            names[name] = _constexpr(names[name])
        return self._run(callee, names)

    def _program_id(self, axis):
        return np.int32(self.pid[self._axis(axis, "kl.program_id")])

    def _num_programs(self, axis):
        return np.int32(self.grid[self._axis(axis, "kl.num_programs")])

    @staticmethod
    def _axis(axis, what):
        if _is_typed(axis) or isinstance(axis, bool) or axis not in (0, 1, 2):
            raise _Error(f"{what}: axis must be 0, 1 or 2, got {_describe(axis)}")
        return axis

    def _subscript(self, node, frame):
        value = self.eval(node.value, frame)
        if isinstance(value, (tuple, list, str)):
            return self._python_subscript(value, node, frame)
        if not (_is_typed(value) or isinstance(value, Pointer)):
            raise _Error(f"{_describe(value)} cannot be indexed")
        index = tuple(self._broadcast_index(item, frame) for item in node.indices)
        slices = sum(item is not None for item in index)
        ndim = len(value.shape) if isinstance(value, Pointer) else np.ndim(value)
        if slices > ndim:
            raise _Error(f"{slices} ':' for {_describe(value)}, which has {ndim} dimensions")
        if isinstance(value, Pointer):
            return Pointer(value.buffer, np.asarray(value.offset)[index])
        return np.asarray(value)[index]

    def _broadcast_index(self, item, frame):
        """One index of a block: ':' keeps a dimension, None inserts one."""
        if isinstance(item, A.Slice):
            if (item.lower, item.upper, item.step) != (None, None, None):
                raise _Error("blocks are sliced only with ':' (whole dimensions)", item)
            return slice(None)
        if self.eval(item, frame) is not None:
            raise _Error("blocks are indexed only with None and ':', to add dimensions for "
                         "broadcasting: x[:, None]", item)
        return None

    def _python_subscript(self, value, node, frame):
        """Indexing a constexpr tuple, such as x.shape[0]."""
        if len(node.indices) != 1:
            raise _Error(f"{_describe(value)} takes one index")
        item = node.indices[0]
        if isinstance(item, A.Slice):
            index = slice(*(None if part is None else self.eval(part, frame)
                            for part in (item.lower, item.upper, item.step)))
        else:
            index = self.eval(item, frame)
        try:
            return value[index]
        except (IndexError, TypeError) as exc:
            raise _Error(f"cannot index {_describe(value)} with {index!r}: {exc}") from None

    def _binop(self, node, frame):
        return _binary(node.op, self.eval(node.left, frame), self.eval(node.right, frame))

    def _unaryop(self, node, frame):
        value = self.eval(node.operand, frame)
        if node.op != "not":
            return _scalar_or_block(_unary(node.op, value))
        truth = not _truth(value)
        return truth if not _is_typed(value) else np.bool_(truth)

    def _boolop(self, node, frame):
        """`and`/`or` on scalars, short-circuiting; constexprs keep Python's result."""
        stop_at = node.op == "or"
        evaluated = []
        for child in node.values:
            value = self.eval(child, frame)
            evaluated.append(value)
            if _truth(value) == stop_at:
                break
        if any(_is_typed(v) for v in evaluated):
            return np.bool_(_truth(value))
        return value

    def _ifexp(self, node, frame):
        branch = node.body if self._condition(node.cond, frame) else node.orelse
        return self.eval(branch, frame)

    def _tuple(self, node, frame):
        return tuple(self.eval(elt, frame) for elt in node.elts)
