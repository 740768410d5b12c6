"""Device tensors: an OpenCL buffer with a shape, a dtype and a device.

    >>> x = kdsl.tensor(np.arange(6).reshape(2, 3))     # int64 data becomes int32
    >>> x.shape, x.dtype, x.strides
    ((2, 3), dtype('int32'), (3, 1))
    >>> x[1].numpy()
    array([3, 4, 5], dtype=int32)

Tensors are C-contiguous. Indexing and slicing the leading dimension, and
reshaping, give views: tensors that share the buffer, starting `offset`
elements in.
"""
import contextlib
import math

import numpy as np
import pyopencl as cl

from . import language as kl
from .device import as_device

# Kernels compute in 32 bits, so 64-bit data from numpy or Python lists is
# narrowed unless a dtype is given.
_NARROWED = {np.dtype(np.float64): np.dtype(np.float32), np.dtype(np.int64): np.dtype(np.int32)}
_OUT_OF_MEMORY_CODES = (cl.status_code.MEM_OBJECT_ALLOCATION_FAILURE,
                        cl.status_code.OUT_OF_RESOURCES, cl.status_code.OUT_OF_HOST_MEMORY)


class Tensor:
    """A C-contiguous block of device memory with numpy-like metadata.

    Made by kdsl.tensor, kdsl.empty and friends rather than directly.

    >>> t = kdsl.zeros((4, 8), dtype=kl.float16)
    >>> t.ndim, t.size, t.nbytes, t.stride(0)
    (2, 32, 64, 8)
    """

    def __init__(self, buffer, shape, dtype, device, offset=0):
        self.buffer = buffer
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.device = device
        self.offset = offset

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return math.prod(self.shape)

    @property
    def itemsize(self):
        return self.dtype.itemsize

    @property
    def nbytes(self):
        return self.size * self.itemsize

    @property
    def strides(self):
        """Element (not byte) strides of the C-contiguous layout."""
        strides = []
        step = 1
        for extent in reversed(self.shape):
            strides.append(step)
            step *= extent
        return tuple(reversed(strides))

    def stride(self, dim):
        """The element stride of dimension `dim`, as torch's Tensor.stride(dim).

        >>> kdsl.empty((2, 3)).stride(-1)
        1
        """
        return self.strides[dim]

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self):
        return (f"<kdsl.Tensor shape={self.shape} dtype={self.dtype} "
                f"offset={self.offset} device={self.device.index}>")

    def numpy(self):
        """A new numpy array holding the tensor's values (waits for the device).

        >>> kdsl.ones(3).numpy()
        array([1., 1., 1.], dtype=float32)
        """
        out = np.empty(self.shape, self.dtype)
        if self.size:
            cl.enqueue_copy(self.device.queue, out, self.buffer,
                            src_offset=self._byte_offset(), is_blocking=True)
        return out

    def __array__(self, dtype=None, copy=None):
        out = self.numpy()
        return out if dtype is None else out.astype(dtype, copy=False)

    def copy_from(self, array):
        """Write a host array of the same shape into this tensor; returns self.

        The values are cast to the tensor's dtype where that loses no kind
        (float64 -> float32 is fine, float -> int is an error).

        >>> t = kdsl.empty((2,))
        >>> t.copy_from(np.array([1.5, 2.5])).numpy()
        array([1.5, 2.5], dtype=float32)
        """
        array = np.asarray(array)
        if array.shape != self.shape:
            raise ValueError(f"copy_from: array of shape {array.shape} does not fit a tensor of "
                             f"shape {self.shape}; reshape the array first")
        if not np.can_cast(array.dtype, self.dtype, casting="same_kind"):
            raise TypeError(f"copy_from: cannot store {array.dtype} values in a {self.dtype} "
                            f"tensor; convert them with array.astype({str(self.dtype)!r}) first")
        if self.size:
            host = np.ascontiguousarray(array, dtype=self.dtype)
            with _out_of_memory_as_error(self.nbytes, self.device):
                cl.enqueue_copy(self.device.queue, self.buffer, host,
                                dst_offset=self._byte_offset(), is_blocking=True)
        return self

    def __getitem__(self, index):
        """A view of one row (int) or a range of rows (step-1 slice) of the leading dimension.

        >>> t = kdsl.tensor(np.arange(10))
        >>> t[2:5].numpy(), t[-1].numpy()
        (array([2, 3, 4], dtype=int32), array(9, dtype=int32))
        """
        if isinstance(index, tuple) and len(index) == 1:
            index = index[0]
        if not self.shape:
            raise IndexError("a 0-d tensor cannot be indexed; use .numpy() to read its value")
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            row = int(index) + (self.shape[0] if index < 0 else 0)
            if not 0 <= row < self.shape[0]:
                raise IndexError(f"index {index} is out of range for dimension 0 of size "
                                 f"{self.shape[0]}")
            return self._view(self.shape[1:], row * self.stride(0))
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            if step != 1:
                raise IndexError(f"slices of a tensor must have step 1 (got {step}), so that "
                                 "views stay contiguous; copy through numpy for strided access")
            rows = max(stop - start, 0)
            return self._view((rows,) + self.shape[1:], start * self.stride(0))
        raise IndexError(f"tensors index only their leading dimension with an int or a step-1 "
                         f"slice, got {index!r}; reshape, or copy through numpy")

    def reshape(self, *shape):
        """A view with a new shape of the same size; one extent may be -1.

        >>> kdsl.empty((6,)).reshape(2, -1).shape
        (2, 3)
        """
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = tuple(shape[0])
        shape = [int(extent) for extent in shape]
        if shape.count(-1) > 1:
            raise ValueError(f"reshape{tuple(shape)}: only one extent can be -1")
        if -1 in shape:
            known = math.prod(e for e in shape if e != -1)
            if known == 0 or self.size % known:
                raise ValueError(f"cannot reshape a tensor of size {self.size} into "
                                 f"{tuple(shape)}")
            shape[shape.index(-1)] = self.size // known
        shape = _as_shape(shape)
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape a tensor of shape {self.shape} (size {self.size}) "
                             f"into {shape} (size {math.prod(shape)})")
        return self._view(shape, 0)

    def _view(self, shape, extra_offset):
        return Tensor(self.buffer, shape, self.dtype, self.device, self.offset + extra_offset)

    def _byte_offset(self):
        return self.offset * self.itemsize


def tensor(data, dtype=None, device=None):
    """A new device tensor holding a copy of `data` (array, list or scalar).

    Without a dtype, float64 becomes float32 and int64 becomes int32; other
    dtypes (float16, int8, uint8, uint32, bool, ...) are kept. With one, the
    data is converted as numpy's astype converts it.

    >>> kdsl.tensor([1.0, 2.0]).dtype
    dtype('float32')
    >>> kdsl.tensor(np.zeros(4, np.float16)).dtype
    dtype('float16')
    """
    array = np.asarray(data)
    dtype = _default_dtype(array) if dtype is None else _as_dtype(dtype)
    out = empty(array.shape, dtype, device)
    return out.copy_from(array.astype(dtype, copy=False))


def empty(shape, dtype=np.float32, device=None):
    """An uninitialised tensor; `shape` is an int or a tuple.

    >>> kdsl.empty((2, 3), dtype=kl.int32).shape
    (2, 3)
    """
    shape = _as_shape(shape)
    dtype = _as_dtype(dtype)
    device = as_device(device)
    return Tensor(_allocate(math.prod(shape) * dtype.itemsize, device), shape, dtype, device)


def full(shape, value, dtype=np.float32, device=None):
    """A tensor with every element equal to `value`.

    >>> kdsl.full(3, 7, dtype="int32").numpy()
    array([7, 7, 7], dtype=int32)
    """
    out = empty(shape, dtype, device)
    if out.size:
        pattern = np.array(value, dtype=out.dtype)
        cl.enqueue_fill_buffer(out.device.queue, out.buffer, pattern, 0, out.nbytes)
    return out


def zeros(shape, dtype=np.float32, device=None):
    """A tensor of zeros.

    >>> kdsl.zeros((2, 2)).numpy().sum()
    0.0
    """
    return full(shape, 0, dtype, device)


def ones(shape, dtype=np.float32, device=None):
    """A tensor of ones.

    >>> kdsl.ones(4, dtype=kl.uint8).numpy()
    array([1, 1, 1, 1], dtype=uint8)
    """
    return full(shape, 1, dtype, device)


def empty_like(t):
    """An uninitialised tensor with the shape, dtype and device of `t`.

    >>> kdsl.empty_like(kdsl.ones((2, 5))).shape
    (2, 5)
    """
    return empty(t.shape, t.dtype, t.device)


def zeros_like(t):
    """A tensor of zeros with the shape, dtype and device of `t`.

    >>> kdsl.zeros_like(kdsl.ones(3, dtype="int8")).numpy()
    array([0, 0, 0], dtype=int8)
    """
    return zeros(t.shape, t.dtype, t.device)


def _as_shape(shape):
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    shape = tuple(int(extent) for extent in shape)
    if any(extent < 0 for extent in shape):
        raise ValueError(f"tensor shapes cannot have negative extents, got {shape}")
    return shape


def _as_dtype(dtype):
    """A numpy dtype from a numpy dtype or type, a string, or a kl dtype."""
    dtype = np.dtype(getattr(dtype, "np", dtype))
    if kl.from_numpy(dtype) is None:
        supported = ", ".join(str(d.np) for d in kl.DTYPES)
        raise TypeError(f"kdsl tensors cannot hold {dtype}; use one of {supported}")
    return dtype


def _default_dtype(array):
    """The dtype kdsl.tensor gives `array`: its own, with 64 bits narrowed to 32."""
    dtype = _as_dtype(_NARROWED.get(array.dtype, array.dtype))
    if dtype.kind in "iu" and array.size:
        limits = np.iinfo(dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise OverflowError(f"values of the {array.dtype} data do not fit in {dtype}, "
                                f"which kernels use by default; pass dtype=kl.int64 to keep them")
    return dtype


def _allocate(nbytes, device):
    if nbytes > device.max_mem_alloc_size:
        raise MemoryError(f"cannot allocate {nbytes} bytes on {device!r}: one buffer can hold "
                          f"at most {device.max_mem_alloc_size} bytes there; use smaller tensors")
    # OpenCL forbids empty buffers, so a zero-size tensor gets one spare byte.
    with _out_of_memory_as_error(nbytes, device):
        return cl.Buffer(device.context, cl.mem_flags.READ_WRITE, size=max(nbytes, 1))


@contextlib.contextmanager
def _out_of_memory_as_error(nbytes, device):
    """Turn the driver's allocation failures into a MemoryError that says what failed.

    Drivers may allocate lazily, at the first write, so writes go through this too.
    """
    try:
        yield
    except cl.Error as error:
        if error.code not in _OUT_OF_MEMORY_CODES:
            raise
        raise MemoryError(f"out of device memory: {nbytes} bytes were requested on {device!r}, "
                          f"which has {device.global_mem_size} bytes in all; free tensors you "
                          f"no longer need or use smaller ones ({error})") from error
