"""kl.max_contiguous: whole runs of a block's last dimension per work-item,
read through 16- or 8-byte vector loads.

Results are checked against numpy on the device and in the interpreter, over
run lengths, tile shapes, row tails (a mask that broadcasts along the run)
and views whose offset breaks the vector alignment (the run-time check's
fallback). The emitted loads are checked on any machine through the code
generator; wrong uses are CompileErrors at the call.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kdsl
import kdsl.language as kl
from kdsl.checker import check
from kdsl.codegen_opencl import generate


@kdsl.jit
def run_sums_kernel(x_ptr, out_ptr, rows, BR: kl.constexpr, BG: kl.constexpr,
                    Q: kl.constexpr, HINT: kl.constexpr):
    """out[r, g] = sum of x[r, g, :] (x of shape [rows, BG, Q]), plus x[r, g, 0]
    again through a second, unhinted read."""
    r = kl.program_id(0) * BR + kl.arange(0, BR)
    g = kl.arange(0, BG)
    q = kl.arange(0, Q)
    offs = kl.max_contiguous(r[:, None, None] * (BG * Q) + g[None, :, None] * Q
                             + q[None, None, :], Q if HINT else 1)
    live = r < rows
    w = kl.load(x_ptr + offs, mask=live[:, None, None], other=0.0)
    first = kl.load(x_ptr + r[:, None] * (BG * Q) + g[None, :] * Q, mask=live[:, None], other=0.0)
    kl.store(out_ptr + r[:, None] * BG + g[None, :], kl.sum(w, axis=2) + first,
             mask=live[:, None])


@kdsl.jit
def int_runs_kernel(x_ptr, out_ptr, BLOCK: kl.constexpr, Q: kl.constexpr):
    """Unmasked 32-bit integer runs, bits kept: out = x ^ 0x5A5A5A5A."""
    offs = kl.max_contiguous(kl.program_id(0) * BLOCK + kl.arange(0, BLOCK), Q)
    kl.store(out_ptr + offs, kl.load(x_ptr + offs) ^ 0x5A5A5A5A)


@kdsl.jit
def masked_runs_kernel(x_ptr, out_ptr, rows, n, other, BR: kl.constexpr, Q: kl.constexpr,
                       PER_ELEMENT: kl.constexpr):
    """out[r, :] = x[r, :] where the row is live (PER_ELEMENT: where the
    element's flat index is below n, a mask that differs within a run), else
    `other`; out is written whole, so what masked-off slots read shows."""
    r = kl.program_id(0) * BR + kl.arange(0, BR)
    q = kl.arange(0, Q)
    offs = kl.max_contiguous(r[:, None] * Q + q[None, :], Q)
    if PER_ELEMENT:
        v = kl.load(x_ptr + offs, mask=offs < n, other=other)
    else:
        v = kl.load(x_ptr + offs, mask=(r < rows)[:, None], other=other)
    kl.store(out_ptr + r[:, None] * Q + q[None, :], v)


def _run_sums(x, rows, bg, q):
    x = x.reshape(rows, bg, q)
    return x.sum(axis=2) + x[:, :, 0]


@settings(max_examples=12, deadline=None)
@given(rows=st.integers(1, 20), br=st.sampled_from((1, 4, 8)), bg=st.sampled_from((1, 2, 8, 32)),
       q=st.sampled_from((1, 2, 4, 8, 16)), threads=st.sampled_from((1, 8, 32)),
       shift=st.integers(0, 3), interpret=st.booleans(), seed=st.integers(0, 2**16))
def test_hinted_runs_match_numpy(rows, br, bg, q, threads, shift, interpret, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(rows * bg * q + shift).astype(np.float32)
    # a view `shift` elements in: its runs start off the 16-byte boundary
    view = kdsl.tensor(x)[shift:]
    out = kdsl.empty((rows * bg,))
    run_sums_kernel._interpret = interpret
    try:
        run_sums_kernel[(kdsl.cdiv(rows, br),)](view, out, rows, BR=br, BG=bg, Q=q, HINT=True,
                                                num_threads=threads)
    finally:
        run_sums_kernel._interpret = None
    want = _run_sums(x[shift:], rows, bg, q)
    np.testing.assert_allclose(out.numpy().reshape(rows, bg), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("per_element", [False, True])
@pytest.mark.parametrize("interpret", [False, True])
def test_masked_off_slots_read_other(per_element, interpret):
    # rows 0..4 of 8 live (a mask broadcast along the run: vector loads), or
    # elements below 19 (a mask that differs within a run: scalar loads)
    x = np.arange(100, 164, dtype=np.float32)
    out = kdsl.empty((64,))
    masked_runs_kernel._interpret = interpret
    try:
        masked_runs_kernel[(2,)](kdsl.tensor(x), out, 5, 19, -7.5, BR=4, Q=8,
                                 PER_ELEMENT=per_element, num_threads=4)
    finally:
        masked_runs_kernel._interpret = None
    live = np.arange(64) < 19 if per_element else np.arange(64) // 8 < 5
    np.testing.assert_array_equal(out.numpy(), np.where(live, x, -7.5))


@pytest.mark.parametrize("q", [2, 4, 8])
def test_integer_runs_keep_their_bits(q):
    x = np.random.default_rng(q).integers(-2**31, 2**31, 256, dtype=np.int64).astype(np.int32)
    out = kdsl.empty((256,), dtype=np.int32)
    int_runs_kernel[(4,)](kdsl.tensor(x), out, BLOCK=64, Q=q, num_threads=16)
    np.testing.assert_array_equal(out.numpy(), x ^ np.int32(0x5A5A5A5A))


def _gpu_source(hint, q=4):
    x, out = kdsl.empty((4 * 32 * q,)), kdsl.empty((4 * 32,))
    values, threads = run_sums_kernel.bind((x, out, 4), dict(BR=4, BG=32, Q=q, HINT=hint,
                                                               num_threads=32))
    ir = check(run_sums_kernel, values, threads)
    ir.num_threads = threads
    return generate(ir, {"is_cpu": False, "has_fp16": False, "inline_ptx": False})


def test_hinted_loads_are_vector_loads():
    source = _gpu_source(True)
    # four rows of one 16-byte run per work-item, each behind the alignment check
    assert source.count("*(__global const float4*)") == 4, source
    assert source.count("vload4(0, ") == 4
    assert "& 15) == 0" in source
    # each work-item sums its own runs: no exchange between work-items
    assert "barrier" not in source
    # without the hint, work-items spread along the run: scalar loads, and the
    # sum goes through local memory
    plain = _gpu_source(False)
    assert "__global const float4*" not in plain and "barrier" in plain
    # runs of 2: 8-byte loads
    assert "*(__global const float2*)" in _gpu_source(True, q=2)


def test_masks_decide_vector_or_scalar():
    def source(per_element):
        x, out = kdsl.empty((64,)), kdsl.empty((64,))
        values, threads = masked_runs_kernel.bind((x, out, 5, 19, -7.5), dict(
            BR=4, Q=8, PER_ELEMENT=per_element, num_threads=4))
        ir = check(masked_runs_kernel, values, threads)
        ir.num_threads = threads
        return generate(ir, {"is_cpu": False, "has_fp16": False, "inline_ptx": False})
    by_row = source(False)
    assert by_row.count("*(__global const float4*)") == 2          # a row of 8: two float4
    assert "(float4)(other)" in by_row
    assert "__global const float4*" not in source(True)


@kdsl.jit
def bad_run_kernel(x_ptr, BLOCK: kl.constexpr):
    offs = kl.max_contiguous(kl.arange(0, BLOCK), 3)  # <-- error
    kl.store(x_ptr + offs, kl.load(x_ptr + offs))


@kdsl.jit
def float_run_kernel(x_ptr, BLOCK: kl.constexpr):
    v = kl.max_contiguous(kl.load(x_ptr + kl.arange(0, BLOCK)), 4)  # <-- error
    kl.store(x_ptr + kl.arange(0, BLOCK), v)


@pytest.mark.parametrize("kernel, cause", [(bad_run_kernel, "power of two"),
                                           (float_run_kernel, "integer offsets")])
def test_bad_hints_name_the_cause(kernel, cause):
    with pytest.raises(kdsl.CompileError, match=cause) as info:
        kernel[(1,)](kdsl.empty((16,)), BLOCK=16)
    text = str(info.value)
    assert "test_vector_loads.py:" in text and "kl.max_contiguous(" in text and "^" in text
