"""Device tensors: round trips, dtypes, views, constructors and their errors."""
import numpy as np
import pyopencl as cl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import kdsl
import kdsl.language as kl

DTYPES = [np.float32, np.float16, np.int32, np.uint32, np.int16, np.uint16, np.int8, np.uint8,
          np.bool_]
SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)


@given(st.sampled_from(DTYPES).flatmap(lambda dtype: hnp.arrays(dtype, SHAPES)))
def test_round_trip_keeps_values_shape_and_dtype(array):
    t = kdsl.tensor(array)
    assert t.shape == array.shape and t.dtype == array.dtype
    back = t.numpy()
    assert back.shape == array.shape and back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)


@pytest.mark.parametrize("shape", [(0,), (3, 0), (0, 0, 2), (1,), (1, 1), ()])
def test_empty_and_size_one_shapes(shape):
    array = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    t = kdsl.tensor(array)
    np.testing.assert_array_equal(t.numpy(), array)
    assert kdsl.zeros(shape).numpy().shape == shape
    assert kdsl.empty(shape).nbytes == array.nbytes


@pytest.mark.parametrize("data, dtype", [
    (np.zeros(3, np.float64), np.float32), (np.zeros(3, np.int64), np.int32),
    ([1.5, 2.0], np.float32), ([1, 2], np.int32), ([True, False], np.bool_), (7, np.int32),
    (np.zeros(3, np.float16), np.float16), (np.zeros(3, np.int8), np.int8),
    (np.zeros(3, np.uint8), np.uint8), (np.zeros(3, np.uint32), np.uint32),
])
def test_default_dtypes_narrow_64_bits_and_keep_the_rest(data, dtype):
    assert kdsl.tensor(data).dtype == dtype


def test_int64_values_beyond_int32_need_an_explicit_dtype():
    with pytest.raises(OverflowError, match="dtype=kl.int64"):
        kdsl.tensor([2**40])
    assert kdsl.tensor([2**40], dtype=kl.int64).numpy()[0] == 2**40


@pytest.mark.parametrize("spec", [np.float16, np.dtype(np.float16), "float16", kl.float16])
def test_dtype_may_be_numpy_string_or_kl(spec):
    assert kdsl.empty(2, dtype=spec).dtype == np.float16
    assert kdsl.tensor([1, 2], dtype=spec).dtype == np.float16


def test_explicit_dtype_converts_like_astype():
    np.testing.assert_array_equal(kdsl.tensor([1.7, -2.2], dtype=kl.int32).numpy(), [1, -2])


@pytest.mark.parametrize("spec", ["float64", np.complex64, object])
def test_unsupported_dtype_is_refused_with_the_supported_list(spec):
    with pytest.raises(TypeError, match="float32, float16"):
        kdsl.empty(2, dtype=spec)


def test_metadata():
    t = kdsl.empty((2, 3, 4), dtype=np.float16)
    assert (t.ndim, t.size, t.itemsize, t.nbytes, len(t)) == (3, 24, 2, 48, 2)
    assert t.strides == (12, 4, 1)
    assert (t.stride(0), t.stride(-1)) == (12, 1)
    assert t.device is kdsl.current_device()
    assert repr(t) == "<kdsl.Tensor shape=(2, 3, 4) dtype=float16 offset=0 device=0>"
    with pytest.raises(TypeError, match="0-d"):
        len(kdsl.empty(()))


@given(st.data())
def test_leading_dimension_views_match_numpy(data):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6))
    array = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    t = kdsl.tensor(array)
    start = data.draw(st.none() | st.integers(-8, 8))
    stop = data.draw(st.none() | st.integers(-8, 8))
    np.testing.assert_array_equal(t[start:stop].numpy(), array[start:stop])
    if shape[0]:
        row = data.draw(st.integers(-shape[0], shape[0] - 1))
        np.testing.assert_array_equal(t[row].numpy(), array[row])


def test_views_share_the_buffer_and_offset_into_it():
    t = kdsl.tensor(np.arange(12, dtype=np.float32).reshape(4, 3))
    rows = t[1:3]
    assert rows.buffer is t.buffer and rows.offset == 3 and rows.shape == (2, 3)
    inner = rows[1]
    assert inner.offset == 6 and inner.shape == (3,)
    inner.copy_from(np.full(3, -1.0))
    np.testing.assert_array_equal(t.numpy()[2], [-1, -1, -1])
    np.testing.assert_array_equal(t.numpy()[[0, 1, 3]].ravel(), [0, 1, 2, 3, 4, 5, 9, 10, 11])
    assert t[(2,)].offset == 6
    assert t[3:1].shape == (0, 3)


def test_reshape_is_a_view():
    t = kdsl.tensor(np.arange(12, dtype=np.int32))
    m = t[2:8].reshape(2, -1)
    assert m.shape == (2, 3) and m.buffer is t.buffer and m.offset == 2
    np.testing.assert_array_equal(m.numpy(), np.arange(2, 8).reshape(2, 3))
    assert t.reshape((3, 4)).shape == (3, 4)
    with pytest.raises(ValueError, match=r"shape \(12,\).*\(5, 2\)"):
        t.reshape(5, 2)
    with pytest.raises(ValueError, match="only one extent"):
        t.reshape(-1, -1)
    with pytest.raises(ValueError, match="size 12"):
        t.reshape(5, -1)


@pytest.mark.parametrize("index, message", [
    (slice(None, None, -1), "positive step"), ((0, 1, 2), "too many indices"),
    (5, "out of range"), (-6, "out of range"), ((0, 2), "out of range"),
    ("a", "ints and slices"), (True, "ints and slices"), ((..., ...), "one '...'"),
])
def test_bad_indexing_says_what_is_allowed(index, message):
    with pytest.raises(IndexError, match=message):
        kdsl.zeros((5, 2))[index]


def test_0d_tensor_cannot_be_indexed():
    with pytest.raises(IndexError, match="0-d"):
        kdsl.tensor(1.0)[0]


def test_copy_from_checks_shape_and_kind():
    t = kdsl.empty((2, 3), dtype=np.int32)
    with pytest.raises(ValueError, match=r"shape \(3, 2\).*shape \(2, 3\)"):
        t.copy_from(np.zeros((3, 2), np.int32))
    with pytest.raises(TypeError, match="float64.*int32"):
        t.copy_from(np.zeros((2, 3)))
    f = kdsl.empty((2,)).copy_from(np.array([0.5, 1.5]))
    np.testing.assert_array_equal(f.numpy(), [0.5, 1.5])


def test_numpy_protocol():
    t = kdsl.tensor([[1, 2], [3, 4]])
    np.testing.assert_array_equal(np.asarray(t), [[1, 2], [3, 4]])
    assert np.asarray(t, dtype=np.float64).dtype == np.float64
    np.testing.assert_array_equal(kdsl.tensor(t).numpy(), t.numpy())


@pytest.mark.parametrize("dtype", DTYPES)
def test_constructors(dtype):
    shape = (3, 2)
    np.testing.assert_array_equal(kdsl.zeros(shape, dtype).numpy(), np.zeros(shape, dtype))
    np.testing.assert_array_equal(kdsl.ones(shape, dtype).numpy(), np.ones(shape, dtype))
    np.testing.assert_array_equal(kdsl.full(shape, 1, dtype).numpy(), np.full(shape, 1, dtype))
    base = kdsl.ones(shape, dtype)
    like = kdsl.empty_like(base)
    assert (like.shape, like.dtype, like.device) == (base.shape, base.dtype, base.device)
    assert like.buffer is not base.buffer
    np.testing.assert_array_equal(kdsl.zeros_like(base).numpy(), np.zeros(shape, dtype))


def test_full_with_float16_and_int_shape():
    np.testing.assert_array_equal(kdsl.full(4, 0.1, kl.float16).numpy(),
                                  np.full(4, 0.1, np.float16))


def test_negative_extent_is_refused():
    with pytest.raises(ValueError, match="negative"):
        kdsl.empty((2, -1))


def test_device_can_be_named():
    dev = kdsl.devices()[0]
    assert kdsl.tensor([1.0], device=0).device is dev
    assert kdsl.zeros(2, device=dev.name).device is dev


def test_too_large_a_tensor_says_bytes_and_device():
    dev = kdsl.current_device()
    count = dev.max_mem_alloc_size // 4 + 1
    with pytest.raises(MemoryError) as info:
        kdsl.empty((count,))
    assert str(count * 4) in str(info.value) and dev.name in str(info.value)


def test_driver_allocation_failure_becomes_memory_error(monkeypatch):
    def failing_buffer(*args, **kwargs):
        raise cl.MemoryError(cl._cl._ErrorRecord(
            msg="no memory", code=cl.status_code.MEM_OBJECT_ALLOCATION_FAILURE,
            routine="create_buffer"))
    monkeypatch.setattr(cl, "Buffer", failing_buffer)
    with pytest.raises(MemoryError) as info:
        kdsl.empty((1000,))
    expected = f"out of device memory: 4000 bytes were requested on {kdsl.current_device()!r}"
    assert str(info.value).startswith(expected)


@given(st.lists(st.integers(1, 5), min_size=1, max_size=3), st.data())
def test_views_read_and_write_like_numpy(shape, data):
    """Any chain of slicing and a permute reads and writes the elements numpy's view would."""
    base = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    t = kdsl.tensor(base)
    index = []
    for extent in shape:
        start = data.draw(st.integers(0, extent - 1))
        stop = data.draw(st.integers(start, extent))
        index.append(slice(start, stop, data.draw(st.integers(1, 3))))
    if len(shape) > 1 and data.draw(st.booleans()):
        index[0] = data.draw(st.integers(-shape[0], shape[0] - 1))
    index = tuple(index)
    order = data.draw(st.permutations(range(base[index].ndim)))
    view, expected = t[index].permute(*order), base[index].transpose(order)
    assert view.shape == expected.shape
    np.testing.assert_array_equal(view.numpy(), expected)
    # Writing through the view changes exactly those elements of the tensor.
    view.copy_from(-expected - 1)
    after = base.copy()
    after[index].transpose(order)[...] = -expected - 1
    np.testing.assert_array_equal(t.numpy(), after)


def test_kernel_writes_through_a_strided_view():
    """A kernel given a column slice and its strides writes only inside the slice."""
    @kdsl.jit
    def fill_columns(out_ptr, rows, cols, stride_row, value, BLOCK: kl.constexpr):
        r = kl.program_id(0)
        c = kl.arange(0, BLOCK)
        kl.store(out_ptr + r * stride_row + c, kl.full((BLOCK,), value, kl.float32), mask=c < cols)

    for interpret in (False, True):
        t = kdsl.zeros((4, 6))
        view = t[1:3, 2:5]
        assert not view.is_contiguous() and view.strides == (6, 1)
        fn = kdsl.jit(fill_columns.fn, interpret=True) if interpret else fill_columns
        fn[(2,)](view, 2, 3, view.stride(0), 7.0, BLOCK=4)
        expected = np.zeros((4, 6), np.float32)
        expected[1:3, 2:5] = 7
        np.testing.assert_array_equal(t.numpy(), expected)


def test_reshape_of_a_strided_view_is_refused():
    with pytest.raises(ValueError, match="non-contiguous"):
        kdsl.zeros((4, 6))[:, 1:3].reshape(-1)


def test_read_async_gives_the_values_after_later_work_is_queued():
    t = kdsl.tensor(np.arange(6, dtype=np.int32))
    pending = t[2:5].read_async()
    t.copy_from(np.zeros(6, np.int32))        # queued after the read: the read sees the old values
    np.testing.assert_array_equal(pending.wait(), [2, 3, 4])
    np.testing.assert_array_equal(pending.wait(), [2, 3, 4])     # waiting twice is fine
    assert kdsl.empty((0,)).read_async().wait().shape == (0,)
    with pytest.raises(ValueError, match="not contiguous"):
        kdsl.empty((4, 4)).transpose(0, 1).read_async()
