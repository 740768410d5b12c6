"""kl.inline_asm_elementwise: Triton's inline assembly, PTX on NVIDIA's OpenCL.

On a device that takes inline PTX the results are checked against numpy;
elsewhere (PoCL, the interpreter) the kernel must fail with a CompileError at
the asm call. The emitted C is checked on any machine through the code
generator with the feature switched on.
"""
import numpy as np
import pytest

import kdsl
import kdsl.language as kl
from kdsl.checker import check
from kdsl.codegen_opencl import generate
from kdsl.device_features import has_inline_ptx

DP4A = "dp4a.u32.s32 $0, $1, $2, $3;"


@kdsl.jit
def dp4a_kernel(a_ptr, b_ptr, c_ptr, out_ptr, BLOCK: kl.constexpr):
    i = kl.arange(0, BLOCK)
    acc = kl.load(c_ptr + i)
    out = kl.inline_asm_elementwise(DP4A, "=r,r,r,r", (kl.load(a_ptr + i), kl.load(b_ptr + i),
                                                      acc), kl.int32)
    kl.store(out_ptr + i, out)


@kdsl.jit
def fma_asm_kernel(x_ptr, out_ptr, y, BLOCK: kl.constexpr):
    i = kl.arange(0, BLOCK)
    # a scalar operand beside a block, a literal % in the text
    out = kl.inline_asm_elementwise("fma.rn.f32 $0, $1, $2, 0f3F800000; // 100%", "=f,f,f",
                                    (kl.load(x_ptr + i), y), kl.float32, is_pure=False)
    kl.store(out_ptr + i, out)


def _dp4a_operands(n=64, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    c = rng.integers(-2**20, 2**20, n).astype(np.int32)
    want = ((a.view(np.uint8).reshape(n, 4).astype(np.int64)
             * b.view(np.int8).reshape(n, 4).astype(np.int64)).sum(1) + c).astype(np.int32)
    return a, b, c, want


def test_dp4a_on_the_device_or_a_clear_error():
    a, b, c, want = _dp4a_operands()
    out = kdsl.empty((64,), dtype=np.int32)
    args = (kdsl.tensor(a, dtype=np.uint32), kdsl.tensor(b, dtype=np.uint32),
            kdsl.tensor(c, dtype=np.int32), out)
    if has_inline_ptx(kdsl.current_device()):
        dp4a_kernel[(1,)](*args, BLOCK=64)
        np.testing.assert_array_equal(out.numpy(), want)
        return
    with pytest.raises(kdsl.CompileError) as info:
        dp4a_kernel[(1,)](*args, BLOCK=64)
    text = str(info.value)
    assert "test_inline_asm.py:" in text and "no inline PTX" in text
    assert "kl.inline_asm_elementwise(DP4A" in text           # the source line, with a caret


def test_float_asm_with_a_scalar_operand():
    x = np.linspace(-2, 2, 32).astype(np.float32)
    out = kdsl.empty((32,))
    if not has_inline_ptx(kdsl.current_device()):
        pytest.skip("the device takes no inline PTX")
    fma_asm_kernel[(1,)](kdsl.tensor(x), out, 3.0, BLOCK=32)
    np.testing.assert_allclose(out.numpy(), x * 3.0 + 1.0, rtol=1e-6)


def test_the_interpreter_refuses_device_assembly(monkeypatch):
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    a, b, c, _ = _dp4a_operands(8)
    with pytest.raises(kdsl.CompileError, match="cannot run device assembly"):
        dp4a_kernel[(1,)](kdsl.tensor(a, dtype=np.uint32), kdsl.tensor(b, dtype=np.uint32),
                          kdsl.tensor(c, dtype=np.int32), kdsl.empty((8,), dtype=np.int32),
                          BLOCK=8)


def _source(jit_fn, args, constexprs):
    values, threads = jit_fn.bind(args, dict(constexprs, num_threads=1))
    ir = check(jit_fn, values, threads)
    return generate(ir, {"is_cpu": False, "has_fp16": False, "inline_ptx": True})


def test_emitted_asm_statements():
    a, b, c, _ = _dp4a_operands(4)
    source = _source(dp4a_kernel, (kdsl.tensor(a, dtype=np.uint32),
                                   kdsl.tensor(b, dtype=np.uint32),
                                   kdsl.tensor(c, dtype=np.int32),
                                   kdsl.empty((4,), dtype=np.int32)), {"BLOCK": 4})
    lines = [s.strip() for s in source.splitlines() if "dp4a.u32" in s]
    assert len(lines) == 4                                     # one per slot
    assert lines[0].startswith('asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(')
    source = _source(fma_asm_kernel, (kdsl.tensor(np.zeros(4, np.float32)), kdsl.empty((4,)),
                                      3.0), {"BLOCK": 4})
    assert 'asm volatile("fma.rn.f32 %0, %1, %2, 0f3F800000; // 100%%" : "=f"(' in source


@kdsl.jit
def asm_call_kernel(x_ptr, out_ptr, TEXT: kl.constexpr, CONSTRAINTS: kl.constexpr,
                    PACK: kl.constexpr, BLOCK: kl.constexpr):
    i = kl.arange(0, BLOCK)
    kl.store(out_ptr + i, kl.inline_asm_elementwise(TEXT, CONSTRAINTS, (kl.load(x_ptr + i),),
                                                    kl.int32, True, PACK))


@pytest.mark.parametrize("constraints, x_dtype, pack, message", [
    ("=r,r,r", np.int32, 1, "must name the result"),
    ("=r,r", np.float32, 1, "argument 0 is"),
    ("=l,l", np.int32, 1, "constraint '=l' is not supported"),
    ("=r,=r", np.int32, 1, "only the first constraint is the result"),
    ("=r,r", np.int32, 4, "pack=4 is not supported"),
])
def test_bad_calls_name_the_cause_and_place(constraints, x_dtype, pack, message):
    x = kdsl.tensor(np.zeros(8, x_dtype), dtype=x_dtype)
    out = kdsl.empty((8,), dtype=np.int32)
    with pytest.raises(kdsl.CompileError) as info:
        asm_call_kernel[(1,)](x, out, TEXT="mov.b32 $0, $1;", CONSTRAINTS=constraints,
                              PACK=pack, BLOCK=8)
    assert message in str(info.value) and "test_inline_asm.py:" in str(info.value)


@kdsl.jit
def scalar_operand_kernel(x_ptr, out_ptr, BLOCK: kl.constexpr):
    i = kl.arange(0, BLOCK)
    kl.store(out_ptr + i, kl.inline_asm_elementwise("add.s32 $0, $1, $2;", "=r,r,r",
                                                    (kl.load(x_ptr + i), 1.5), kl.int32))


def test_a_float_for_an_integer_register_is_an_error():
    with pytest.raises(kdsl.CompileError, match="argument 1 is"):
        scalar_operand_kernel[(1,)](kdsl.tensor(np.zeros(8, np.int32), dtype=np.int32),
                                    kdsl.empty((8,), dtype=np.int32), BLOCK=8)
