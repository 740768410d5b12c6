"""Prepared launches give the results ordinary launches give, and follow argument changes."""
import numpy as np
import pytest

import kdsl
import kdsl.language as kl


@kdsl.jit
def axpy(x_ptr, y_ptr, out_ptr, a, n, BLOCK: kl.constexpr):
    offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
    mask = offs < n
    x = kl.load(x_ptr + offs, mask=mask)
    y = kl.load(y_ptr + offs, mask=mask)
    kl.store(out_ptr + offs, a * x + y, mask=mask)


def test_prepared_launch_repeats_and_follows_set():
    rng = np.random.default_rng(1)
    x_h, y_h = rng.standard_normal(300).astype(np.float32), rng.standard_normal(300).astype(np.float32)
    x, y, out = kdsl.tensor(x_h), kdsl.tensor(y_h), kdsl.zeros((300,))
    step = axpy.prepare((kdsl.cdiv(300, 64),), x, y, out, 2.0, 300, BLOCK=64)
    for _ in range(3):
        step()
    np.testing.assert_allclose(out.numpy(), 2 * x_h + y_h, rtol=1e-6)
    step.set(a=-1.0)()
    np.testing.assert_allclose(out.numpy(), -x_h + y_h, rtol=1e-6)
    # n = 1 and n = 32 change the specialisation: the launch rebuilds itself.
    for n in (1, 32, 77):
        out2 = kdsl.zeros((300,))
        step.set(n=n, out_ptr=out2, grid=(kdsl.cdiv(n, 64),))()
        expected = np.zeros(300, np.float32)
        expected[:n] = -x_h[:n] + y_h[:n]
        np.testing.assert_allclose(out2.numpy(), expected, rtol=1e-6)


def test_prepared_launch_keeps_a_kernel_per_specialisation():
    """A scalar crossing a multiple of 16 and back switches between two built
    kernels (no rebuild each time), each with the current arguments."""
    x_h = np.arange(64, dtype=np.float32)
    x, out = kdsl.tensor(x_h), kdsl.zeros((64,))
    step = axpy.prepare((1,), x, x, out, 1.0, 15, BLOCK=64)
    kernels = []
    for n, a in ((15, 1.0), (16, 2.0), (17, 3.0), (32, 4.0), (33, 5.0)):
        step.set(n=n, a=a)()
        kernels.append(step.cl_kernel)
        expected = np.where(np.arange(64) < n, (a + 1) * x_h, 0)
        np.testing.assert_allclose(out.numpy()[:n], expected[:n], rtol=1e-6)
    assert kernels[0] is kernels[2] is kernels[4] and kernels[1] is kernels[3]
    assert kernels[0] is not kernels[1]


def test_advance_follows_ints_and_offsets_across_specialisations():
    """advance() (a replayed step's per-token change) gives what set() gives: ints
    that cross 1 and multiples of 16 (a rebuild), and views moved along a buffer."""
    x_h = np.arange(64, dtype=np.float32)
    x, out = kdsl.tensor(x_h), kdsl.zeros((4, 64))
    step = axpy.prepare((1,), x, x, out[0], 1.0, 14, BLOCK=64)
    for row, n in enumerate((14, 15, 16, 17, 1, 2, 32, 31)):
        target = out[row % 4]
        target.copy_from(np.zeros(64, np.float32))
        step.advance("n", n).advance("out_ptr", target)()
        expected = np.where(np.arange(64) < n, 2 * x_h, 0)
        np.testing.assert_array_equal(out.numpy()[row % 4], expected)
    # an offset moved by advance(), then a flip by set(): the kernel switched to
    # must see the moved offset, not the one it had when last used
    step.advance("out_ptr", out[1])
    step.set(n=48)()
    np.testing.assert_array_equal(out.numpy()[1], np.where(np.arange(64) < 48, 2 * x_h, 0))
    # a view of another buffer or dtype is no offset move: it goes through set()
    other = kdsl.zeros((64,))
    step.advance("out_ptr", other)()
    np.testing.assert_array_equal(other.numpy()[:31], 2 * x_h[:31])


def test_prepared_launch_writes_into_views():
    base = kdsl.zeros((4, 64))
    x = kdsl.tensor(np.ones(64, np.float32))
    step = axpy.prepare((1,), x, x, base[2], 1.0, 64, BLOCK=64)
    step()
    expected = np.zeros((4, 64), np.float32)
    expected[2] = 2
    np.testing.assert_array_equal(base.numpy(), expected)


def test_prepared_launch_errors_name_the_cause():
    x = kdsl.zeros((8,))
    with pytest.raises(kdsl.LaunchError, match="numpy array"):
        axpy.prepare((1,), np.zeros(8, np.float32), x, x, 1.0, 8, BLOCK=8)
    step = axpy.prepare((1,), x, x, x, 1.0, 8, BLOCK=8)
    with pytest.raises(kdsl.LaunchError, match="no argument 'b'"):
        step.set(b=1)
    with pytest.raises(kdsl.LaunchError, match="constexpr"):
        step.set(BLOCK=16)
    with pytest.raises(kdsl.LaunchError, match="interpreter"):
        kdsl.jit(axpy.fn, interpret=True).prepare((1,), x, x, x, 1.0, 8, BLOCK=8)


def test_capture_launches_records_what_a_wrapper_launches_and_replays_it():
    x, y = kdsl.tensor(np.arange(100, dtype=np.float32)), kdsl.zeros((100,))

    def wrapper(a, out):          # a library function hiding its launch
        axpy[(kdsl.cdiv(a.shape[0], 32),)](a, a, out, 3.0, a.shape[0], BLOCK=32)

    with kdsl.capture_launches() as outer:
        with kdsl.capture_launches() as launches:
            wrapper(x, y)
    assert len(launches) == 1 and outer == launches
    rec = launches[0]
    assert rec.jit_fn is axpy and rec.grid == (4, 1, 1) and rec.values["n"] == 100
    rec.event.wait()
    assert rec.event.profile.end >= rec.event.profile.start
    np.testing.assert_allclose(y.numpy(), 4 * np.arange(100))
    y2 = kdsl.zeros((100,))
    replay = rec.jit_fn.prepare(rec.grid, **{**rec.values, "out_ptr": y2},
                                num_threads=rec.num_threads)
    replay()
    np.testing.assert_allclose(y2.numpy(), 4 * np.arange(100))
    with kdsl.capture_launches() as none:
        pass
    assert none == []


@kdsl.jit
def echo_scalars(out_ptr, a, b, flag, n):
    i = kl.arange(0, 4)
    kl.store(out_ptr + i, kl.where(i == 0, a, kl.where(i == 1, b * 1.0,
                                                       kl.where(i == 2, flag * 1.0, n * 1.0))))


@pytest.mark.parametrize("args", [(1.5, 3, True, -7), (1e40, -2**31, False, 2**31 - 1),
                                  (float("-inf"), 0, 1, 5)])
def test_scalar_arguments_reach_the_kernel_as_numpy_would_pass_them(args):
    """Scalars are packed to bytes for the driver (kdsl.launch.scalar_setter): the
    kernel sees what numpy's conversion gives, in ordinary and prepared launches."""
    a, b, flag, n = args
    expected = np.array([np.float32(a) if abs(a) < 1e39 else np.copysign(np.inf, a),
                         b, bool(flag), n], np.float32)
    out = kdsl.zeros((4,))
    echo_scalars[(1,)](out, *args)
    np.testing.assert_array_equal(out.numpy(), expected)
    out2 = kdsl.zeros((4,))
    step = echo_scalars.prepare((1,), out2, 0.0, 0, False, 0)
    step.set(a=a, b=b, flag=flag, n=n)()
    np.testing.assert_array_equal(out2.numpy(), expected)
