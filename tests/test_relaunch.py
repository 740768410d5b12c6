"""Launches that reuse the previous launch's compiled kernel (kdsl/relaunch.py)
give the results a fresh binding gives, and anything unlike the previous
launch takes the ordinary path: a new specialisation, errors, numpy arrays."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import kdsl
import kdsl.language as kl
from kdsl import capture
from kdsl.errors import LaunchError


@kdsl.jit
def scaled_copy(x_ptr, out_ptr, a, n, BLOCK: kl.constexpr, NEGATE: kl.constexpr):
    offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
    mask = offs < n
    x = kl.load(x_ptr + offs, mask=mask, other=0).to(kl.float32)
    y = a * x
    if NEGATE:
        y = -y
    kl.store(out_ptr + offs, y, mask=mask)


def run(x, n, a=2.0, BLOCK=64, NEGATE=False, **kw):
    out = kdsl.zeros((max(n, 1),))
    scaled_copy[(kdsl.cdiv(n, BLOCK),)](x, out, a, n, BLOCK=BLOCK, NEGATE=NEGATE, **kw)
    return out.numpy()


def expected(x_h, n, a=2.0, NEGATE=False):
    want = np.zeros(max(n, 1), np.float32)
    want[:n] = a * x_h[:n].astype(np.float32) * (-1 if NEGATE else 1)
    return want


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.sampled_from([16, 64]),
                          st.sampled_from(["float32", "int32", "float16"]), st.booleans(),
                          st.sampled_from([2.0, -0.5])), min_size=2, max_size=6))
def test_a_sequence_of_launches_matches_numpy(calls):
    """Launch after launch with sizes that cross 1 and multiples of 16, other
    dtypes, blocks and constexprs: each result is the one for its own arguments."""
    rng = np.random.default_rng(0)
    for n, block, dtype, negate, a in calls:
        x_h = (rng.standard_normal(max(n, 1)) * 10).astype(dtype)
        x = kdsl.tensor(x_h)
        np.testing.assert_allclose(run(x, n, a, block, negate), expected(x_h, n, a, negate),
                                   rtol=1e-6)


def test_alike_launches_share_one_compiled_kernel():
    x_h = np.arange(100, dtype=np.float32)
    run(kdsl.tensor(x_h), 100)
    first = scaled_copy._relaunch.compiled
    for n in (99, 97, 45):                    # not 1, no multiple of 16: alike
        np.testing.assert_allclose(run(kdsl.tensor(x_h), n, a=3.0), expected(x_h, n, 3.0))
        assert scaled_copy._relaunch.compiled is first
    np.testing.assert_allclose(run(kdsl.tensor(x_h), 96), expected(x_h, 96))
    assert scaled_copy._relaunch.compiled is not first


def test_a_constexpr_of_another_type_is_another_kernel():
    """True and 1 are equal in Python but specialise differently."""
    x_h = np.arange(8, dtype=np.float32)
    x = kdsl.tensor(x_h)
    np.testing.assert_allclose(run(x, 8, NEGATE=True), expected(x_h, 8, NEGATE=True))
    first = scaled_copy._relaunch.compiled
    np.testing.assert_allclose(run(x, 8, NEGATE=1), expected(x_h, 8, NEGATE=True))
    assert scaled_copy._relaunch.compiled is not first


def test_errors_after_a_good_launch_are_still_reported():
    x = kdsl.tensor(np.ones(32, np.float32))
    run(x, 32)
    with pytest.raises(LaunchError, match="num_threads must be a power of two"):
        run(x, 32, num_threads=3)
    out = kdsl.zeros((32,))
    with pytest.raises(LaunchError, match="takes 6 arguments"):
        scaled_copy[(1,)](x, out, 2.0, 32, 64, False, 7)
    with pytest.raises(LaunchError, match="argument 'a' is None"):
        scaled_copy[(1,)](x, out, None, 32, BLOCK=64, NEGATE=False)


def test_numpy_arguments_are_still_copied_back():
    x_h = np.arange(40, dtype=np.float32)
    x = kdsl.tensor(x_h)
    run(x, 40)                                 # leaves a shortcut for tensors
    out_h = np.zeros(40, np.float32)
    scaled_copy[(1,)](x, out_h, 2.0, 40, BLOCK=64, NEGATE=False)
    np.testing.assert_allclose(out_h, 2 * x_h)


def test_views_and_grids_of_alike_launches():
    """Same dtypes and constexprs, another view of a buffer and another grid."""
    x_h = np.arange(256, dtype=np.float32)
    x = kdsl.tensor(x_h)
    out = kdsl.zeros((256,))
    for start, n in ((0, 200), (50, 150), (100, 155)):
        scaled_copy[(kdsl.cdiv(n, 16),)](x[start:], out[start:], 1.0, n, BLOCK=16, NEGATE=False)
        np.testing.assert_array_equal(out.numpy()[start:start + n], x_h[start:start + n])


@kdsl.jit
def fill_tail(out_ptr, value, n, BLOCK: kl.constexpr):
    offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
    kl.store(out_ptr + offs, kl.full((BLOCK,), value, kl.float32), mask=offs < n)


def test_int_specialisations_are_not_shared():
    """n = 1 and multiples of 16 compile their own kernels (a proven mask is
    dropped at n = 32): a launch with n = 5 or 20 after them must not run those."""
    for first, then in ((1, 5), (32, 20), (5, 1), (20, 32)):
        out = kdsl.tensor(np.full(64, -1.0, np.float32))
        fill_tail[(kdsl.cdiv(first, 16),)](out, 3.0, first, BLOCK=16)
        out2 = kdsl.tensor(np.full(64, -1.0, np.float32))
        fill_tail[(kdsl.cdiv(then, 16),)](out2, 3.0, then, BLOCK=16)
        want = np.where(np.arange(64) < then, 3.0, -1.0)
        np.testing.assert_array_equal(out2.numpy(), want)


def test_positional_constexprs_and_keyword_floats_follow_their_values():
    x_h = np.arange(8, dtype=np.float32)
    x = kdsl.tensor(x_h)
    out = kdsl.zeros((8,))
    for negate, a in ((False, 2.0), (True, 2.0), (True, -3.0), (1, -3.0), (False, 0.5)):
        scaled_copy[(1,)](x, out, a, 8, 8, negate)          # every argument by position
        np.testing.assert_allclose(out.numpy(), expected(x_h, 8, a, bool(negate)))
    for a in (2.0, -1.5, 4.0):                               # a runtime float by keyword
        scaled_copy[(1,)](x, out, n=8, a=a, BLOCK=8, NEGATE=False)
        np.testing.assert_allclose(out.numpy(), expected(x_h, 8, a))


@kdsl.jit
def reciprocal(out_ptr, a, C: kl.constexpr):
    kl.store(out_ptr + kl.arange(0, 2), kl.full((2,), 1.0, kl.float32) / (a * C))


def test_the_sign_of_zero_is_an_argument_like_any_other():
    """-0.0 == 0.0 in Python, but 1 / -0.0 is -inf: neither a constexpr nor a
    runtime float of -0.0 may reuse what was built or set for 0.0."""
    out = kdsl.zeros((2,))
    for a, c in ((1.0, 0.0), (1.0, -0.0), (0.0, 1.0), (-0.0, 1.0), (0.0, 1.0)):
        reciprocal[(1,)](out, a, C=c)
        with np.errstate(divide="ignore"):
            want = np.float32(1.0) / (np.float32(a) * np.float32(c))
        np.testing.assert_array_equal(out.numpy(), [want, want])


def test_a_keyword_array_after_a_keyword_scalar_is_the_usual_error():
    x = kdsl.tensor(np.ones(4, np.float32))
    out = kdsl.zeros((4,))
    scaled_copy[(1,)](x, out, a=2.0, n=4, BLOCK=4, NEGATE=False)
    with pytest.raises(LaunchError, match="argument 'a' has dtype float64"):
        scaled_copy[(1,)](x, out, a=np.array([1.0, 2.0]), n=4, BLOCK=4, NEGATE=False)


def test_capture_records_what_a_bound_launch_records():
    x = kdsl.tensor(np.ones(16, np.float32))
    out = kdsl.zeros((16,))
    with capture.capture_launches() as records:
        for _ in range(2):                     # the second takes the shortcut
            scaled_copy[(1,)](x, out, 2.0, 16, BLOCK=16, NEGATE=False, num_threads=True)
    assert len(records) == 2
    first, second = records
    assert first.values.keys() == second.values.keys()
    assert all(first.values[k] is second.values[k] or first.values[k] == second.values[k]
               for k in first.values)
    assert first.num_threads == second.num_threads == 1 and type(second.num_threads) is int


def test_the_interpreter_switched_on_is_not_bypassed(monkeypatch):
    x_h = np.arange(8, dtype=np.float32)
    x = kdsl.tensor(x_h)
    run(x, 8)

    def no_device_launch(*args):
        raise AssertionError("the shortcut ran the OpenCL kernel under KDSL_INTERPRET=1")
    monkeypatch.setattr(scaled_copy._relaunch, "compiled", no_device_launch)
    monkeypatch.setenv("KDSL_INTERPRET", "1")
    np.testing.assert_allclose(run(x, 8), expected(x_h, 8))
