"""The kernel language's builtins: `import kdsl.language as kl`.

These functions are only meaningful inside a `@kdsl.jit` kernel, where the
compiler (or the interpreter) gives them their meaning; called from plain
Python they raise. Their docstrings are the language reference.

Semantics, as in Triton: one *program* is one OpenCL work-group; values are
scalars or *blocks* whose shape is a tuple of compile-time powers of two.
fp16 is a storage type: loading from an fp16 pointer gives float32 values and
storing to one rounds to fp16.
"""
import numpy as np


class dtype:
    """A kernel value's element type (kl.float32, kl.int32, ...)."""

    def __init__(self, name, np_dtype, c_type, bits, kind):
        self.name = name
        self.np = np.dtype(np_dtype)
        self.c_type = c_type
        self.bits = bits
        self.kind = kind            # 'f' float, 'i' signed int, 'u' unsigned, 'b' bool

    @property
    def is_float(self):
        return self.kind == "f"

    @property
    def is_int(self):
        return self.kind in "iub"

    @property
    def is_bool(self):
        return self.kind == "b"

    @property
    def is_signed(self):
        return self.kind in "if"

    @property
    def itemsize(self):
        return (self.bits + 7) // 8          # (max is kl.max in this module)

    def __repr__(self):
        return f"kl.{self.name}"

    def __reduce__(self):
        return self.name


float32 = dtype("float32", np.float32, "float", 32, "f")
float16 = dtype("float16", np.float16, "half", 16, "f")
int32 = dtype("int32", np.int32, "int", 32, "i")
uint32 = dtype("uint32", np.uint32, "uint", 32, "u")
int8 = dtype("int8", np.int8, "char", 8, "i")
uint8 = dtype("uint8", np.uint8, "uchar", 8, "u")
int16 = dtype("int16", np.int16, "short", 16, "i")
uint16 = dtype("uint16", np.uint16, "ushort", 16, "u")
int64 = dtype("int64", np.int64, "long", 64, "i")
int1 = dtype("int1", np.bool_, "bool", 1, "b")

DTYPES = [float32, float16, int32, uint32, int8, uint8, int16, uint16, int64, int1]
_BY_NUMPY = {d.np: d for d in DTYPES}


def from_numpy(np_dtype):
    """The kl dtype of a numpy dtype, or None when the language has none."""
    return _BY_NUMPY.get(np.dtype(np_dtype))


class constexpr:
    """Annotation for a compile-time parameter: `BLOCK: kl.constexpr`.

    Each distinct value compiles a distinct kernel; block shapes must be
    built from constexprs, literals and module-level constants.
    """

    def __init__(self, value=None):
        self.value = value

    def __repr__(self):
        return f"constexpr({self.value!r})"


def _builtin(fn):
    """Mark a function as a kernel builtin: calling it from Python raises."""
    def outside(*args, **kwargs):
        raise RuntimeError(f"kl.{fn.__name__} can only be called inside a @kdsl.jit kernel")
    outside.__name__ = fn.__name__
    outside.__qualname__ = fn.__name__
    outside.__doc__ = fn.__doc__
    outside.__kdsl_builtin__ = fn.__name__
    return outside


@_builtin
def program_id(axis):
    """Index of this program (work-group) along grid axis 0, 1 or 2.

    >>> pid = kl.program_id(0)
    """


@_builtin
def num_programs(axis):
    """Number of programs along grid axis 0, 1 or 2."""


@_builtin
def arange(start, end):
    """Block [start, start+1, ..., end-1] of int32; end - start a power of two.

    >>> offs = pid * BLOCK + kl.arange(0, BLOCK)
    """


@_builtin
def zeros(shape, dtype):
    """Block of the given constexpr shape filled with 0: kl.zeros((BM, BN), kl.float32)."""


@_builtin
def full(shape, value, dtype):
    """Block of the given constexpr shape filled with a scalar value."""


@_builtin
def load(pointer, mask=None, other=None):
    """Load a scalar or block from memory.

    Where `mask` is false nothing is read and `other` (default 0) is returned;
    an unmasked out-of-bounds access is undefined on a device and an error in
    the interpreter. Loading fp16 gives float32 values.

    >>> x = kl.load(x_ptr + offs, mask=offs < n, other=0.0)
    """


@_builtin
def store(pointer, value, mask=None):
    """Store a scalar or block to memory where `mask` is true (fp16 pointers round).

    >>> kl.store(out_ptr + offs, x, mask=offs < n)
    """


@_builtin
def dot(a, b, acc=None):
    """Matrix product of blocks a [M, K] and b [K, N], accumulated in float32.

    `acc` [M, N] is added to the product: `acc = kl.dot(a, b, acc)`.
    """


@_builtin
def trans(x):
    """Transpose of a 2-D block."""


@_builtin
def reshape(x, shape):
    """The block's elements (in row-major order) in a new constexpr shape."""


@_builtin
def sum(x, axis=None, keep_dims=False):
    """Sum along an axis (all axes when None); int1 and int8 sum as int32, fp16 as float32."""


@_builtin
def max(x, axis=None, keep_dims=False):
    """Maximum along an axis (all axes when None)."""


@_builtin
def min(x, axis=None, keep_dims=False):
    """Minimum along an axis (all axes when None)."""


@_builtin
def argmax(x, axis, keep_dims=False):
    """Index (int32) of the maximum along an axis; the first one on ties."""


@_builtin
def argmin(x, axis, keep_dims=False):
    """Index (int32) of the minimum along an axis; the first one on ties."""


@_builtin
def where(condition, x, y):
    """Elementwise `x` where `condition` else `y`, broadcasting all three."""


@_builtin
def exp(x):
    """e**x, elementwise, in float32."""


@_builtin
def exp2(x):
    """2**x, elementwise."""


@_builtin
def log(x):
    """Natural logarithm, elementwise."""


@_builtin
def log2(x):
    """Base-2 logarithm, elementwise."""


@_builtin
def sqrt(x):
    """Square root, elementwise."""


@_builtin
def rsqrt(x):
    """1 / sqrt(x), elementwise."""


@_builtin
def abs(x):
    """Absolute value, elementwise (integers stay integers)."""


@_builtin
def sin(x):
    """Sine, elementwise."""


@_builtin
def cos(x):
    """Cosine, elementwise."""


@_builtin
def sigmoid(x):
    """1 / (1 + exp(-x)), elementwise."""


@_builtin
def maximum(x, y):
    """Elementwise maximum (NaN-propagation as OpenCL's fmax: the non-NaN operand)."""


@_builtin
def minimum(x, y):
    """Elementwise minimum."""


@_builtin
def fma(x, y, z):
    """x * y + z with one rounding, elementwise."""


@_builtin
def inline_asm_elementwise(asm, constraints, args, dtype, is_pure=True, pack=1):
    """Triton's escape hatch to the device's assembly: `asm` runs once per element.

    asm: the instruction text, operands written $0 (the result), $1, $2, ...
    for args in order; constraints: "=r,r,r" style, the result's then each
    argument's ("r" a 32-bit integer register, "f" a float32 one); args: a
    tuple of scalars or blocks (broadcast together); dtype: the result's
    (kl.int32, kl.uint32 or kl.float32). is_pure=False writes `asm volatile`
    (the device compiler neither merges nor moves it; kdsl itself emits an
    asm only where its result is used, once per layout it is used in); pack
    must be 1 (one element per asm).
    The text is PTX, so the kernel builds only for NVIDIA's OpenCL (a
    CompileError elsewhere and in the interpreter); a library kernel picks
    such a form by config, beside a portable one.

    >>> d = kl.inline_asm_elementwise("dp4a.u32.s32 $0, $1, $2, $3;", "=r,r,r,r",
    ...                               (codes, x_bytes, acc), kl.int32)
    """


@_builtin
def multiple_of(x, n):
    """Hint: the scalar x is a multiple of n (lets the compiler drop bounds checks)."""


@_builtin
def max_contiguous(x, n):
    """Hint: the integer offsets x run in steps of 1 along their last
    dimension, in runs of n (a power of two) starting at multiples of n.
    Returns x. The code generator gives each work-item whole runs of n
    elements of x and of what is computed from it, so a 32-bit load through
    `ptr + x` reads each run with vector loads (16 bytes at a time, where
    the address is aligned at run time; stores stay scalar). Wrong hints
    never change results, only speed.

    >>> offs = kl.max_contiguous(rows[:, None] * K + cols[None, :], 4)
    """


@_builtin
def static_range(*args):
    """Like range() with constexpr bounds, fully unrolled at compile time."""


@_builtin
def range(*args):
    """Same as Python's range() inside a kernel: a runtime loop."""


def cdiv(a, b):
    """Ceiling division, ⌈a / b⌉, for Python ints and (in kernels) scalars.

    >>> kdsl.cdiv(1000, 256)
    4
    """
    return -(-a // b)


BUILTINS = {name: obj for name, obj in list(globals().items())
            if callable(obj) and getattr(obj, "__kdsl_builtin__", None)}
BUILTINS["cdiv"] = cdiv
