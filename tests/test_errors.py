"""Broken kernels: every one must fail with a kdsl.CompileError that points at the fault.

Each kernel marks its offending line with a `# ERR` comment; the test finds
that line in the file and expects `err.line` to be it and `err.col` to be the
1-based column where the offending expression starts (Python's ast
convention + 1), and the message to show the source line with a caret under
that column. Errors are raised at launch time, on the device and in the
interpreter alike. Bad launch arguments raise kdsl.LaunchError, which has no
position.

Syntax that Python itself rejects (a missing colon, an unclosed bracket, bad
indentation, `$`) cannot reach `@kdsl.jit` from a module Python imported, so
those kernels go through `kdsl.parser.parse_source`, the step `@kdsl.jit`
uses, with their text and file position.
"""
import inspect
import re

import numpy as np
import pytest

import kdsl
import kdsl.language as kl
from kdsl.parser import parse_source

MARKER = "# ERR"
N = 64


@pytest.fixture(params=[False, True], ids=["device", "interpreter"])
def interpret(request):
    return request.param


def marked_line(kernel, marker=MARKER):
    """(file line number, text) of the line of `kernel`'s source carrying `marker`."""
    fn = kernel.fn if isinstance(kernel, kdsl.JITFunction) else kernel
    lines, start = inspect.getsourcelines(fn)
    for i, text in enumerate(lines):
        if marker in text:
            return start + i, text
    raise AssertionError(f"no {marker!r} line in {fn.__name__}")


def column_of(text, token):
    """1-based column of the first occurrence of `token` in a source line."""
    index = text.find(token)
    assert index >= 0, f"{token!r} not in {text!r}"
    return index + 1


def check_position(err, line, text, columns):
    """The error names `line`, one of `columns`, and shows `text` with a caret."""
    assert err.line == line, f"expected line {line}, got {err.line}: {err}"
    assert err.col in columns, f"expected column in {sorted(columns)}, got {err.col}: {err}"
    shown = str(err).splitlines()
    assert len(shown) >= 3, f"message lacks the source line and caret: {err}"
    assert re.match(r".+:\d+:\d+: error: ", shown[0]), shown[0]
    assert shown[0].endswith(err.message) or err.message in str(err)
    # the source line, then a caret under the column (both indented by 4)
    assert shown[1].strip() == text.strip(), shown[1]
    caret = shown[2]
    assert caret.strip() == "^", caret
    source_indent = len(shown[1]) - len(shown[1].lstrip(" "))
    text_indent = len(text.expandtabs()) - len(text.expandtabs().lstrip(" "))
    assert caret.index("^") == source_indent - text_indent + err.col - 1, \
        f"caret at {caret.index('^')} does not sit under column {err.col}:\n{err}"


def expect_error(kernel, interpret, grid, args, kwargs, tokens, cause, marker=MARKER):
    """Launch `kernel`; it must raise a CompileError at the marked line.

    `tokens`: the token(s) on that line whose start column is acceptable.
    `cause`: a regular expression the message must match (case-insensitive).
    """
    kernel._interpret = interpret
    try:
        with pytest.raises(kdsl.CompileError) as info:
            kernel[grid](*args, **kwargs)
    finally:
        kernel._interpret = None
    err = info.value
    assert not isinstance(err, kdsl.LaunchError), f"a kernel error, not a launch error: {err}"
    line, text = marked_line(kernel, marker)
    tokens = [tokens] if isinstance(tokens, str) else tokens
    check_position(err, line, text, {column_of(text, t) for t in tokens})
    assert re.search(cause, err.message, re.I), f"message does not match {cause!r}: {err}"
    assert err.filename and err.filename.endswith(".py"), err.filename
    return err


def f32(n=N):
    return np.arange(n, dtype=np.float32)


def i32(n=N):
    return np.arange(n, dtype=np.int32)


# ------------------------------------------------------------------ syntax
# Python rejects these, so they are parsed from text the way @kdsl.jit parses
# a function's source: the def line at file line FIRST of "kernels.py".
FIRST = 40

# name: (kernel text, index of the bad line, acceptable tokens or "end" for the
# end of the line's code, regular expression for the message)
SYNTAX_ERRORS = {
    "missing_colon_if": ("""\
def k(x_ptr, n):
    i = kl.program_id(0)
    if i < n
        kl.store(x_ptr + i, 1.0)
""", 2, "end", r"syntax|expected|':'"),
    "missing_colon_with_comment": ("""\
def k(x_ptr, n):
    i = kl.program_id(0)
    if i < n   # only the first n
        kl.store(x_ptr + i, 1.0)
""", 2, "end", r"syntax|expected|':'"),
    "missing_colon_for": ("""\
def k(x_ptr, n):
    for i in range(n)
        kl.store(x_ptr + i, 1.0)
""", 1, "end", r"syntax|expected|':'"),
    "missing_colon_def": ("""\
def k(x_ptr, n)
    kl.store(x_ptr, 1.0)
""", 0, "end", r"syntax|expected|':'"),
    "unclosed_bracket_at_end": ("""\
def k(x_ptr, n):
    offs = kl.arange(0, 16)
    kl.store(x_ptr + offs, kl.full((16,), 1.0, kl.float32)
""", 2, ["(x_ptr", "kl.store"], r"unclosed|never closed|'\('"),
    "unclosed_bracket_mid_kernel": ("""\
def k(x_ptr, n):
    offs = kl.arange(0, 16)
    x = kl.load(x_ptr + offs
    kl.store(x_ptr + offs, x + 1.0)
""", 2, ["(x_ptr", "kl.load"], r"unclosed|never closed|'\('"),
    "unexpected_indent": ("""\
def k(x_ptr, n):
    i = kl.program_id(0)
        kl.store(x_ptr + i, 1.0)
""", 2, ["kl.store"], r"indent"),
    "unindent_mismatch": ("""\
def k(x_ptr, n):
    if n > 0:
        i = kl.program_id(0)
      kl.store(x_ptr + i, 1.0)
""", 3, ["kl.store"], r"indent"),
    "dollar": ("""\
def k(x_ptr, n):
    i = kl.program_id(0)
    kl.store(x_ptr + $i, 1.0)
""", 2, ["$"], r"syntax|character|'\$'"),
    "unbalanced_close": ("""\
def k(x_ptr, n):
    i = kl.program_id(0))
""", 1, [")"], r"syntax|unmatched|'\)'"),
}


@pytest.mark.parametrize("name", list(SYNTAX_ERRORS))
def test_syntax_error(name):
    text, index, tokens, cause = SYNTAX_ERRORS[name]
    file_lines = ["\n"] * (FIRST - 1) + text.splitlines(keepends=True)
    with pytest.raises(kdsl.CompileError) as info:
        parse_source(text, "kernels.py", FIRST, file_lines)
    err = info.value
    bad = text.splitlines()[index]
    if tokens == "end":      # where the ':' is missing: just after the code
        columns = {len(bad.split("#")[0].rstrip()) + 1}
    else:
        columns = {bad.rindex(t) + 1 if t == ")" else column_of(bad, t) for t in tokens}
    assert err.filename == "kernels.py"
    check_position(err, FIRST + index, bad, columns)
    assert re.search(cause, err.message, re.I), err


def test_syntax_error_in_a_kernel_indented_in_a_function():
    """A kernel nested in a class or function is dedented; columns stay the file's."""
    text = ("    def k(x_ptr):\n"
            "        kl.store(x_ptr, 1.0) $\n")
    file_lines = ["\n"] * 9 + text.splitlines(keepends=True)
    with pytest.raises(kdsl.CompileError) as info:
        parse_source(text, "nested.py", 10, file_lines)
    check_position(info.value, 11, text.splitlines()[1], {column_of(text.splitlines()[1], "$")})


# ------------------------------------------------------- unsupported syntax
# Python accepts these; the kernel language leaves them out.
@kdsl.jit
def class_kernel(x_ptr):
    class Point:                                            # ERR
        pass
    kl.store(x_ptr, 1.0)


@kdsl.jit
def lambda_kernel(x_ptr):
    double = lambda v: v * 2                                # ERR
    kl.store(x_ptr, double(1.0))


@kdsl.jit
def try_kernel(x_ptr):
    try:                                                    # ERR
        kl.store(x_ptr, 1.0)
    except Exception:
        pass


@kdsl.jit
def with_kernel(x_ptr):
    with open("f") as f:                                    # ERR
        kl.store(x_ptr, 1.0)


@kdsl.jit
def comprehension_kernel(x_ptr):
    values = [i * 2 for i in range(4)]                      # ERR
    kl.store(x_ptr, 1.0)


@kdsl.jit
def import_kernel(x_ptr):
    import math                                             # ERR
    kl.store(x_ptr, 1.0)


@kdsl.jit
def subscript_assign_kernel(x_ptr):
    x_ptr[0] = 1.0                                          # ERR
    kl.store(x_ptr, 1.0)


@kdsl.jit
def chained_compare_kernel(x_ptr, n, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    mask = 0 <= offs < n                                    # ERR
    kl.store(x_ptr + offs, 1.0, mask=mask)


@kdsl.jit
def nested_def_kernel(x_ptr):
    def inner(v):                                           # ERR
        return v
    kl.store(x_ptr, 1.0)


@kdsl.jit
def dict_kernel(x_ptr):
    table = {"a": 1.0}                                      # ERR
    kl.store(x_ptr, 1.0)


@kdsl.jit
def star_args_kernel(x_ptr, *rest):                         # ERR
    kl.store(x_ptr, 1.0)


UNSUPPORTED = [
    (class_kernel, "class", r"class"),
    (lambda_kernel, "lambda", r"lambda"),
    (try_kernel, "try", r"try"),
    (with_kernel, "with", r"with"),
    (comprehension_kernel, "[i * 2", r"comprehension"),
    (import_kernel, "import", r"import"),
    (subscript_assign_kernel, "x_ptr[0]", r"subscript|kl\.store"),
    (chained_compare_kernel, "0 <=", r"chained"),
    (nested_def_kernel, "def inner", r"nested|def|function"),
    (dict_kernel, "{", r"syntax|dict|'\{'|not supported"),
    (star_args_kernel, "*rest", r"syntax|\*|not supported"),
]


@pytest.mark.parametrize("kernel,token,cause", UNSUPPORTED,
                         ids=[k.__name__ for k, _, _ in UNSUPPORTED])
def test_unsupported_construct(kernel, token, cause, interpret):
    args = (f32(), 5) if kernel is chained_compare_kernel else (f32(),)
    kwargs = {"BLOCK": 16} if kernel is chained_compare_kernel else {}
    expect_error(kernel, interpret, (1,), args, kwargs, token, cause)


# ------------------------------------------------------------------ names
@kdsl.jit
def unknown_name_kernel(x_ptr, n, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offz, mask=offs < n)                # ERR
    kl.store(x_ptr + offs, x, mask=offs < n)


def test_unknown_name(interpret):
    err = expect_error(unknown_name_kernel, interpret, (1,), (f32(), N), {"BLOCK": 16},
                       "offz", r"unknown name|not defined|undefined")
    assert "offz" in err.message


@kdsl.jit
def unknown_builtin_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    y = kl.foo(offs)                                        # ERR
    kl.store(x_ptr + offs, y)


def test_unknown_kl_function(interpret):
    err = expect_error(unknown_builtin_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                       "kl.foo", r"foo")
    assert re.search(r"unknown|no (builtin|function|attribute)|not a", err.message, re.I), err


def python_helper(v):
    return v + 1


@kdsl.jit
def python_call_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    y = python_helper(kl.load(x_ptr + offs))                # ERR
    kl.store(x_ptr + offs, y)


def test_calling_a_plain_python_function(interpret):
    err = expect_error(python_call_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                       "python_helper", r"python_helper")
    assert re.search(r"jit|kernel|builtin|cannot call|not callable", err.message, re.I), err


@kdsl.jit
def two_args(a, b):
    return a + b


@kdsl.jit
def helper_arity_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    y = two_args(x, x, x)                                   # ERR
    kl.store(x_ptr + offs, y)


def test_wrong_number_of_arguments_to_helper(interpret):
    expect_error(helper_arity_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                 "two_args", r"argument|takes|positional")


@kdsl.jit
def broken_helper(v):
    return v * undefined_scale                              # ERR


@kdsl.jit
def calls_broken_helper_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    kl.store(x_ptr + offs, broken_helper(kl.load(x_ptr + offs)))


def test_error_inside_helper_points_into_the_helper(interpret):
    calls_broken_helper_kernel._interpret = interpret
    try:
        with pytest.raises(kdsl.CompileError) as info:
            calls_broken_helper_kernel[(1,)](f32(), BLOCK=16)
    finally:
        calls_broken_helper_kernel._interpret = None
    line, text = marked_line(broken_helper)
    check_position(info.value, line, text, {column_of(text, "undefined_scale")})


@kdsl.jit
def bad_keyword_builtin_kernel(x_ptr, n, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs, msk=offs < n)                 # ERR
    kl.store(x_ptr + offs, x)


def test_unknown_keyword_to_builtin(interpret):
    expect_error(bad_keyword_builtin_kernel, interpret, (1,), (f32(), N), {"BLOCK": 16},
                 ["msk", "kl.load"], r"msk")


# ------------------------------------------------------------------ shapes
@kdsl.jit
def binop_shape_kernel(x_ptr, BLOCK: kl.constexpr):
    a = kl.load(x_ptr + kl.arange(0, BLOCK))
    b = kl.load(x_ptr + kl.arange(0, BLOCK // 2))
    c = a + b                                               # ERR
    kl.store(x_ptr + kl.arange(0, BLOCK), c)


def test_binary_op_shape_mismatch(interpret):
    err = expect_error(binop_shape_kernel, interpret, (1,), (f32(),), {"BLOCK": 32},
                       "a + b", r"shape|broadcast")
    assert "32" in err.message and "16" in err.message, err


@kdsl.jit
def load_mask_shape_kernel(x_ptr, n, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    small = kl.arange(0, BLOCK // 2)
    x = kl.load(x_ptr + offs, mask=small < n, other=0.0)    # ERR
    kl.store(x_ptr + offs, x)


def test_load_mask_shape_mismatch(interpret):
    expect_error(load_mask_shape_kernel, interpret, (1,), (f32(), N), {"BLOCK": 32},
                 ["small < n", "kl.load"], r"shape|broadcast")


@kdsl.jit
def store_mask_2d_kernel(x_ptr, n, BLOCK: kl.constexpr):
    rows = kl.arange(0, BLOCK)
    cols = kl.arange(0, 2 * BLOCK)
    x = kl.load(x_ptr + rows)
    kl.store(x_ptr + rows, x, mask=cols < n)                # ERR


def test_store_mask_shape_mismatch(interpret):
    expect_error(store_mask_2d_kernel, interpret, (1,), (f32(), N), {"BLOCK": 8},
                 ["cols < n", "kl.store"], r"shape|broadcast")


@kdsl.jit
def store_value_shape_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    wide = kl.zeros((2 * BLOCK,), kl.float32)
    kl.store(x_ptr + offs, wide)                            # ERR


def test_store_value_shape_mismatch(interpret):
    expect_error(store_value_shape_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                 ["wide", "kl.store"], r"shape|broadcast")


@kdsl.jit
def dot_shape_kernel(x_ptr, BLOCK: kl.constexpr):
    r = kl.arange(0, BLOCK)
    a = kl.load(x_ptr + r[:, None] * BLOCK + r[None, :])
    b = kl.zeros((2 * BLOCK, BLOCK), kl.float32)
    c = kl.dot(a, b)                                        # ERR
    kl.store(x_ptr + r[:, None] * BLOCK + r[None, :], c)


def test_dot_inner_dimension_mismatch(interpret):
    expect_error(dot_shape_kernel, interpret, (1,), (f32(),), {"BLOCK": 8},
                 ["kl.dot", "a, b", "b)"], r"shape|dimension|dot")


@kdsl.jit
def dot_1d_kernel(x_ptr, BLOCK: kl.constexpr):
    r = kl.arange(0, BLOCK)
    v = kl.load(x_ptr + r)
    m = kl.zeros((BLOCK, BLOCK), kl.float32)
    c = kl.dot(v, m)                                        # ERR
    kl.store(x_ptr + r[:, None] * BLOCK + r[None, :], c)


def test_dot_of_a_1d_block(interpret):
    expect_error(dot_1d_kernel, interpret, (1,), (f32(),), {"BLOCK": 8},
                 ["kl.dot", "v, m"], r"2-?d|two|dimension|shape")


@kdsl.jit
def reduce_axis_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    s = kl.sum(x, axis=1)                                   # ERR
    kl.store(x_ptr, s)


def test_reduction_axis_out_of_range(interpret):
    expect_error(reduce_axis_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                 ["kl.sum", "axis=1", "1)"], r"axis")


@kdsl.jit
def reshape_count_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    y = kl.reshape(x, (4, 4))                               # ERR
    kl.store(x_ptr + offs[:16], kl.reshape(y, (16,)))


def test_reshape_element_count_mismatch(interpret):
    expect_error(reshape_count_kernel, interpret, (1,), (f32(),), {"BLOCK": 32},
                 ["kl.reshape", "(4, 4)"], r"reshape|element|size|shape")


@kdsl.jit
def loop_shape_change_kernel(x_ptr, n, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    acc = kl.zeros((BLOCK,), kl.float32)
    for i in range(n):
        acc = acc[:, None] + kl.load(x_ptr + offs)[None, :]  # ERR
    kl.store(x_ptr + offs, kl.sum(acc, axis=0))


def test_variable_changes_shape_in_loop(interpret):
    expect_error(loop_shape_change_kernel, interpret, (1,), (f32(), 2), {"BLOCK": 8},
                 ["acc =", "acc[:, None] +"], r"shape|loop")


@kdsl.jit
def loop_only_variable_kernel(x_ptr, n):
    for i in range(n):
        last = kl.load(x_ptr + i)
    kl.store(x_ptr, last)                                   # ERR


def test_variable_defined_only_in_loop(interpret):
    err = expect_error(loop_only_variable_kernel, interpret, (1,), (f32(), 3), {},
                       "last)", r"last")
    assert re.search(r"loop|defined|unknown|assigned", err.message, re.I), err


@kdsl.jit
def if_only_variable_kernel(x_ptr, n):
    if n > 2:
        v = 1.0
    kl.store(x_ptr, v)                                      # ERR


def test_variable_defined_in_one_branch(interpret):
    err = expect_error(if_only_variable_kernel, interpret, (1,), (f32(), 3), {},
                       "v)", r"\bv\b")
    assert re.search(r"branch|defined|unknown|assigned|every", err.message, re.I), err


@kdsl.jit
def arange_runtime_kernel(x_ptr, n):
    offs = kl.arange(0, n)                                  # ERR
    kl.store(x_ptr + offs, 1.0)


def test_arange_with_runtime_bound(interpret):
    expect_error(arange_runtime_kernel, interpret, (1,), (f32(), 16), {},
                 ["kl.arange", "n)"], r"constexpr|compile.time|constant")


@kdsl.jit
def zeros_runtime_kernel(x_ptr, n):
    z = kl.zeros((n,), kl.float32)                          # ERR
    kl.store(x_ptr + kl.arange(0, 16), z)


def test_zeros_with_runtime_shape(interpret):
    expect_error(zeros_runtime_kernel, interpret, (1,), (f32(), 16), {},
                 ["kl.zeros", "(n,)", "n,)"], r"constexpr|compile.time|constant")


@kdsl.jit
def arange_pow2_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)                              # ERR
    kl.store(x_ptr + offs, 1.0)


def test_arange_not_power_of_two(interpret):
    err = expect_error(arange_pow2_kernel, interpret, (1,), (f32(),), {"BLOCK": 48},
                       ["kl.arange", "BLOCK)"], r"power of (two|2)")
    assert "48" in err.message, err


@kdsl.jit
def zeros_pow2_kernel(x_ptr):
    z = kl.zeros((4, 12), kl.float32)                       # ERR
    kl.store(x_ptr, kl.sum(z))


def test_zeros_not_power_of_two(interpret):
    expect_error(zeros_pow2_kernel, interpret, (1,), (f32(),), {},
                 ["kl.zeros", "(4, 12)", "12"], r"power of (two|2)")


# ------------------------------------------------------------------ dtypes
@kdsl.jit
def float_shift_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    y = x << 2                                              # ERR
    kl.store(x_ptr + offs, y)


def test_shift_of_float(interpret):
    expect_error(float_shift_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                 "x << 2", r"float|integer|<<")


@kdsl.jit
def float_invert_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    y = ~x                                                  # ERR
    kl.store(x_ptr + offs, y)


def test_invert_of_float(interpret):
    expect_error(float_invert_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                 "~x", r"float|integer|~")


@kdsl.jit
def float_and_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    y = x & offs                                            # ERR
    kl.store(x_ptr + offs, y)


def test_bitwise_and_of_float(interpret):
    expect_error(float_and_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                 "x & offs", r"float|integer|&")


@kdsl.jit
def store_float_to_int_kernel(out_ptr, x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    kl.store(out_ptr + offs, x * 0.5)                       # ERR


def test_store_float_to_int_pointer(interpret):
    expect_error(store_float_to_int_kernel, interpret, (1,), (i32(), f32()), {"BLOCK": 16},
                 ["x * 0.5", "kl.store"], r"float|int|dtype|type")


@kdsl.jit
def float_pointer_offset_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs * 0.5)                         # ERR
    kl.store(x_ptr + offs, x)


def test_pointer_plus_float(interpret):
    expect_error(float_pointer_offset_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                 ["x_ptr + offs", "offs * 0.5"], r"pointer|integer|float")


@kdsl.jit
def pointer_times_kernel(x_ptr, BLOCK: kl.constexpr):
    p = x_ptr * 2                                           # ERR
    kl.store(p, 1.0)


def test_pointer_multiplied(interpret):
    expect_error(pointer_times_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                 "x_ptr * 2", r"pointer")


@kdsl.jit
def float_floordiv_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    kl.store(x_ptr + offs, x // 2.0)                        # ERR


def test_floor_division_of_floats(interpret):
    # Triton (and the interpreter's documented semantics) reject float `//`.
    expect_error(float_floordiv_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                 "x // 2.0", r"float|//|integer")


# ---------------------------------------------------------- control flow
@kdsl.jit
def block_if_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    x = kl.load(x_ptr + offs)
    if x > 0:                                               # ERR
        kl.store(x_ptr + offs, x)


def test_block_as_if_condition(interpret):
    err = expect_error(block_if_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                       "x > 0", r"block|scalar|condition|where")
    assert re.search(r"scalar|kl\.where|block", err.message, re.I), err


@kdsl.jit
def block_while_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    while offs < 4:                                         # ERR
        offs += 1
    kl.store(x_ptr + offs, 1.0)


def test_block_as_while_condition(interpret):
    expect_error(block_while_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                 "offs < 4", r"block|scalar|condition")


@kdsl.jit
def block_and_kernel(x_ptr, n, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    mask = offs < n and offs > 2                            # ERR
    kl.store(x_ptr + offs, 1.0, mask=mask)


def test_and_on_blocks(interpret):
    expect_error(block_and_kernel, interpret, (1,), (f32(), 10), {"BLOCK": 16},
                 "offs < n and", r"and|&|block")


# Python itself rejects `break` and `continue` outside a loop when it compiles
# a module, so these kernels live in a file of their own: Python compiles a
# stub with the bad line replaced by `pass`, and kdsl reads the file's text,
# as it does for every kernel.
OUTSIDE_LOOP = {
    "break": ("""\
def k(x_ptr, n):
    kl.store(x_ptr, 1.0)
    break
""", 2, r"break|loop"),
    "continue": ("""\
def k(x_ptr, n):
    if n > 0:
        continue
    kl.store(x_ptr, 1.0)
""", 2, r"continue|loop"),
    "break_in_if_after_loop": ("""\
def k(x_ptr, n):
    for i in range(n):
        kl.store(x_ptr + i, 1.0)
    if n > 2:
        break
""", 4, r"break|loop"),
}


def kernel_from_file(path, text, bad_index, first_line=10):
    """A kernel whose file holds `text`, compiled by Python with line `bad_index` as `pass`."""
    lines = text.splitlines()
    bad = lines[bad_index]
    stub = lines[:bad_index] + [bad[:len(bad) - len(bad.lstrip())] + "pass"] \
        + lines[bad_index + 1:]
    padding = "\n" * (first_line - 1)
    path.write_text(padding + text)
    namespace = {"kl": kl, "kdsl": kdsl}
    exec(compile(padding + "\n".join(stub) + "\n", str(path), "exec"), namespace)
    return kdsl.jit(namespace["k"])


@pytest.mark.parametrize("name", list(OUTSIDE_LOOP))
def test_break_or_continue_outside_loop(name, interpret, tmp_path):
    text, index, cause = OUTSIDE_LOOP[name]
    kernel = kernel_from_file(tmp_path / f"kernel_{name}.py", text, index)
    kernel._interpret = interpret
    with pytest.raises(kdsl.CompileError) as info:
        kernel[(1,)](f32(), 3)
    err = info.value
    bad = text.splitlines()[index]
    check_position(err, 10 + index, bad, {column_of(bad, bad.strip())})
    assert re.search(cause, err.message, re.I), err


@kdsl.jit
def returns_value_kernel(x_ptr, BLOCK: kl.constexpr):
    x = kl.load(x_ptr + kl.arange(0, BLOCK))
    return x                                                # ERR


def test_kernel_returning_a_value(interpret):
    expect_error(returns_value_kernel, interpret, (1,), (f32(),), {"BLOCK": 16},
                 ["return", "x  "], r"return")


@kdsl.jit
def program_id_axis_kernel(x_ptr):
    pid = kl.program_id(3)                                  # ERR
    kl.store(x_ptr + pid, 1.0)


def test_program_id_axis_out_of_range(interpret):
    expect_error(program_id_axis_kernel, interpret, (1,), (f32(),), {},
                 ["kl.program_id", "3)"], r"axis|0, 1|0 to 2|0..2")


@kdsl.jit
def load_non_pointer_kernel(x_ptr, n):
    x = kl.load(n + 1)                                      # ERR
    kl.store(x_ptr, x)


def test_load_from_a_non_pointer(interpret):
    expect_error(load_non_pointer_kernel, interpret, (1,), (f32(), 3), {},
                 ["n + 1", "kl.load"], r"pointer")


# ------------------------------------------------------------------ launches
@kdsl.jit
def good_kernel(x_ptr, n, BLOCK: kl.constexpr):
    offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
    kl.store(x_ptr + offs, offs.to(kl.float32), mask=offs < n)


BAD_LAUNCHES = {
    "missing_argument": ((1,), (f32(),), {"BLOCK": 16}, r"missing|\bn\b"),
    "missing_constexpr": ((1,), (f32(), N), {}, r"missing|BLOCK"),
    "extra_argument": ((1,), (f32(), N, 16, 7), {}, r"takes|arguments|given"),
    "unexpected_keyword": ((1,), (f32(), N), {"BLOCK": 16, "BLOK": 3}, r"BLOK"),
    "duplicate_argument": ((1,), (f32(), N), {"n": 5, "BLOCK": 16}, r"\bn\b|two values"),
    "string_argument": ((1,), (f32(), "64"), {"BLOCK": 16}, r"\bn\b|str"),
    "none_argument": ((1,), (f32(), None), {"BLOCK": 16}, r"\bn\b|None"),
    "none_pointer": ((1,), (None, N), {"BLOCK": 16}, r"x_ptr|None"),
    "list_argument": ((1,), ([1.0, 2.0], N), {"BLOCK": 16}, r"x_ptr|list"),
    "float64_array": ((1,), (np.zeros(N), N), {"BLOCK": 16}, r"float64|dtype"),
    "float_grid": ((1.5,), (f32(), N), {"BLOCK": 16}, r"grid"),
    "four_d_grid": ((1, 1, 1, 1), (f32(), N), {"BLOCK": 16}, r"grid"),
    "empty_grid": ((), (f32(), N), {"BLOCK": 16}, r"grid"),
    "negative_grid": ((-1,), (f32(), N), {"BLOCK": 16}, r"grid"),
    "string_grid": (("4",), (f32(), N), {"BLOCK": 16}, r"grid"),
    "callable_grid_bad": (lambda meta: (meta["n"] / 3,), (f32(), N), {"BLOCK": 16}, r"grid"),
    "num_threads_48": ((1,), (f32(), N), {"BLOCK": 16, "num_threads": 48},
                       r"num_threads|power of two"),
    "num_threads_0": ((1,), (f32(), N), {"BLOCK": 16, "num_threads": 0},
                      r"num_threads|power of two"),
    "num_threads_float": ((1,), (f32(), N), {"BLOCK": 16, "num_threads": 64.0},
                          r"num_threads|power of two"),
}


@pytest.mark.parametrize("name", list(BAD_LAUNCHES))
def test_bad_launch(name, interpret):
    grid, args, kwargs, cause = BAD_LAUNCHES[name]
    good_kernel._interpret = interpret
    try:
        with pytest.raises(kdsl.LaunchError) as info:
            good_kernel[grid](*args, **kwargs)
    finally:
        good_kernel._interpret = None
    err = info.value
    assert isinstance(err, kdsl.CompileError)
    assert err.line is None and err.col is None, err
    assert re.search(cause, str(err)), f"message does not match {cause!r}: {err}"
    assert "good_kernel" in str(err), err


def test_good_launch_still_works(interpret):
    """The kernel the bad launches use is itself fine."""
    x = np.zeros(40, np.float32)
    good_kernel._interpret = interpret
    try:
        good_kernel[(kdsl.cdiv(40, 16),)](x, 40, BLOCK=16)
    finally:
        good_kernel._interpret = None
    assert np.array_equal(x, np.arange(40, dtype=np.float32))


def test_error_is_raised_again_on_a_second_launch(interpret):
    """A failed compile is not cached as a success."""
    for _ in range(2):
        expect_error(unknown_name_kernel, interpret, (1,), (f32(), N), {"BLOCK": 16},
                     "offz", r"unknown name|not defined|undefined")


def test_str_of_error_format():
    with pytest.raises(kdsl.CompileError) as info:
        unknown_name_kernel[(1,)](f32(), N, BLOCK=16)
    err = info.value
    line, text = marked_line(unknown_name_kernel)
    first, source, caret = str(err).splitlines()[:3]
    assert first == f"{err.filename}:{line}:{err.col}: error: {err.message}"
    assert source == "    " + text.rstrip("\n")
    assert caret == "    " + " " * (err.col - 1) + "^"


KERNEL_MODULE = '''
import kdsl
import kdsl.language as kl


@kdsl.jit
def scale_kernel(x_ptr, out_ptr, BLOCK: kl.constexpr):
    offs = kl.arange(0, BLOCK)
    kl.store(out_ptr + offs, kl.load(x_ptr + offs) * 2.0)


@kdsl.jit
def broken_kernel(x_ptr, BLOCK: kl.constexpr):
    kl.store(x_ptr + kl.arange(0, BLOCK), undefined_name)
'''


def test_kernel_source_is_the_one_python_imported(tmp_path, monkeypatch):
    # a kernel file edited between import and first launch (lines inserted above the
    # kernels, the body changed) still compiles the code Python imported, and an error
    # in it points at the line as it was imported
    import importlib
    path = tmp_path / "edited_kernels.py"
    path.write_text(KERNEL_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("edited_kernels")
    path.write_text("# inserted\n" * 5 + KERNEL_MODULE.replace("* 2.0", "* 3.0"))
    x = kdsl.tensor(np.arange(N, dtype=np.float32))
    out = kdsl.empty((N,), np.float32)
    module.scale_kernel[(1,)](x, out, BLOCK=N)
    np.testing.assert_array_equal(out.numpy(), np.arange(N, dtype=np.float32) * 2)
    with pytest.raises(kdsl.CompileError) as err:
        module.broken_kernel[(1,)](x, BLOCK=N)
    assert err.value.line == KERNEL_MODULE.splitlines().index(
        "    kl.store(x_ptr + kl.arange(0, BLOCK), undefined_name)") + 1
