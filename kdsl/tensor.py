"""Device tensors: an OpenCL buffer with a shape, a dtype and a device.

    >>> x = kdsl.tensor(np.arange(6).reshape(2, 3))     # int64 data becomes int32
    >>> x.shape, x.dtype, x.strides
    ((2, 3), dtype('int32'), (3, 1))
    >>> x[1].numpy()
    array([3, 4, 5], dtype=int32)

A tensor is a strided view of a buffer: element (i, j, ...) lives at
`offset + i*strides[0] + j*strides[1] + ...` (in elements). New tensors are
C-contiguous; indexing, slicing, `permute`/`transpose` and `reshape` give
views that share the buffer, so a kernel can write straight into a slice of
a larger tensor (a KV cache slot, say). Kernels receive a pointer to the
view's first element; they take strides as arguments from `t.stride(d)`.
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
    """A strided view of device memory with numpy-like metadata.

    Made by kdsl.tensor, kdsl.empty and friends rather than directly.

    >>> t = kdsl.zeros((4, 8), dtype=kl.float16)
    >>> t.ndim, t.size, t.nbytes, t.stride(0)
    (2, 32, 64, 8)
    """

    def __init__(self, buffer, shape, dtype, device, offset=0, strides=None):
        self.buffer = buffer
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.device = device
        self.offset = offset
        self._strides = _contiguous_strides(self.shape) if strides is None else tuple(strides)

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
        """Element (not byte) strides, one per dimension."""
        return self._strides

    def is_contiguous(self):
        """Whether the elements lie in C order with no gaps (extents of 1 may have any stride).

        >>> kdsl.empty((2, 3)).is_contiguous(), kdsl.empty((2, 3)).transpose(0, 1).is_contiguous()
        (True, False)
        """
        expected = _contiguous_strides(self.shape)
        return all(extent == 1 or have == want
                   for extent, have, want in zip(self.shape, self._strides, expected))

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
        if self.is_contiguous():
            out = np.empty(self.shape, self.dtype)
            if self.size:
                cl.enqueue_copy(self.device.queue, out, self.buffer,
                                src_offset=self._byte_offset(), is_blocking=True)
            return out
        return self._on_span(self.read_span()).copy()

    def read_async(self):
        """Start copying a contiguous tensor to the host after the queued work;
        returns a PendingRead whose wait() gives the numpy array. The host can
        queue more launches before it waits (the engine queues the next decode
        step while the token of this one is read back).

        >>> pending = t.read_async()
        >>> ...                          # queue more work
        >>> values = pending.wait()
        """
        if not self.is_contiguous():
            raise ValueError(f"read_async: the tensor (shape {self.shape}, strides "
                             f"{self.strides}) is not contiguous; read it with numpy()")
        out = np.empty(self.shape, self.dtype)
        event = None
        if self.size:
            event = cl.enqueue_copy(self.device.queue, out, self.buffer,
                                    src_offset=self._byte_offset(), is_blocking=False)
        return PendingRead(out, event)

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
        if not self.size:
            return self
        if not self.is_contiguous():
            # Read-modify-write of the span keeps the gaps between elements,
            # which belong to other views, as they are.
            span = self.read_span()
            self._on_span(span)[...] = array
            return self.write_span(span)
        host = np.ascontiguousarray(array, dtype=self.dtype)
        with _out_of_memory_as_error(self.nbytes, self.device):
            cl.enqueue_copy(self.device.queue, self.buffer, host,
                            dst_offset=self._byte_offset(), is_blocking=True)
        return self

    def span(self):
        """How many elements, from the first one, the view reaches over (gaps included)."""
        if not self.size:
            return 0
        return 1 + sum((extent - 1) * stride for extent, stride in zip(self.shape, self._strides))

    def read_span(self):
        """The view's span as a flat host array: element (i, j, ...) at i*strides[0] + j*strides[1] + ..."""
        out = np.empty(self.span(), self.dtype)
        if out.size:
            cl.enqueue_copy(self.device.queue, out, self.buffer,
                            src_offset=self._byte_offset(), is_blocking=True)
        return out

    def write_span(self, flat):
        """Write a flat host array of `span()` elements back over the view's span; returns self."""
        flat = np.ascontiguousarray(flat, dtype=self.dtype)
        if flat.size != self.span():
            raise ValueError(f"write_span: {flat.size} elements given for a span of {self.span()}")
        if flat.size:
            cl.enqueue_copy(self.device.queue, self.buffer, flat,
                            dst_offset=self._byte_offset(), is_blocking=True)
        return self

    def _on_span(self, flat):
        """A numpy view of the tensor's elements over a host copy of its span."""
        itemsize = self.itemsize
        return np.lib.stride_tricks.as_strided(
            flat, self.shape, tuple(stride * itemsize for stride in self._strides))

    def __getitem__(self, index):
        """A view: per dimension an int (drops it) or a slice with a positive step.

        >>> t = kdsl.tensor(np.arange(12).reshape(3, 4))
        >>> t[1].numpy(), t[:, 1:3].numpy()[0], t[-1, ::2].numpy()
        (array([4, 5, 6, 7], dtype=int32), array([1, 2], dtype=int32), array([ 8, 10], dtype=int32))
        """
        if not self.shape:
            raise IndexError("a 0-d tensor cannot be indexed; use .numpy() to read its value")
        if not isinstance(index, tuple):
            index = (index,)
        if index.count(Ellipsis) > 1:
            raise IndexError("an index can hold only one '...'")
        if Ellipsis in index:
            at = index.index(Ellipsis)
            fill = (slice(None),) * (self.ndim - len(index) + 1)
            index = index[:at] + fill + index[at + 1:]
        if len(index) > self.ndim:
            raise IndexError(f"too many indices ({len(index)}) for a tensor of {self.ndim} "
                             f"dimensions")
        offset, shape, strides = self.offset, [], []
        for dim, (item, extent, stride) in enumerate(zip(index, self.shape, self._strides)):
            if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
                i = int(item) + (extent if item < 0 else 0)
                if not 0 <= i < extent:
                    raise IndexError(f"index {item} is out of range for dimension {dim} of "
                                     f"size {extent}")
                offset += i * stride
            elif isinstance(item, slice):
                start, stop, step = item.indices(extent)
                if step <= 0:
                    raise IndexError(f"slices of a tensor need a positive step, got {step} in "
                                     f"dimension {dim}; copy through numpy to reverse")
                count = max(0, (stop - start + step - 1) // step)
                offset += start * stride if count else 0
                shape.append(count)
                strides.append(stride * step)
            else:
                raise IndexError(f"tensors are indexed by ints and slices, got {item!r} in "
                                 f"dimension {dim}")
        rest = len(index)
        return Tensor(self.buffer, tuple(shape) + self.shape[rest:], self.dtype, self.device,
                      offset, tuple(strides) + self._strides[rest:])

    def permute(self, *dims):
        """A view with the dimensions reordered, as torch's permute.

        >>> kdsl.empty((2, 3, 4)).permute(1, 0, 2).shape
        (3, 2, 4)
        """
        if len(dims) == 1 and not isinstance(dims[0], (int, np.integer)):
            dims = tuple(dims[0])
        dims = tuple(int(d) % self.ndim if self.ndim else int(d) for d in dims)
        if sorted(dims) != list(range(self.ndim)):
            raise ValueError(f"permute{dims}: give each of the {self.ndim} dimensions once")
        return Tensor(self.buffer, tuple(self.shape[d] for d in dims), self.dtype, self.device,
                      self.offset, tuple(self._strides[d] for d in dims))

    def transpose(self, dim0, dim1):
        """A view with two dimensions swapped.

        >>> kdsl.empty((2, 3)).transpose(0, 1).strides
        (1, 3)
        """
        dims = list(range(self.ndim))
        dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
        return self.permute(dims)

    def reshape(self, *shape):
        """A view with a new shape of the same size; one extent may be -1.

        Only contiguous tensors reshape (a view would need strides it cannot have).

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
        if not self.is_contiguous():
            raise ValueError(f"cannot reshape a non-contiguous view (shape {self.shape}, strides "
                             f"{self.strides}); reshape the tensor it was taken from instead")
        return self._view(shape, 0)

    def _view(self, shape, extra_offset):
        return Tensor(self.buffer, shape, self.dtype, self.device, self.offset + extra_offset)

    def _byte_offset(self):
        return self.offset * self.itemsize


class PendingRead:
    """A device-to-host copy in flight (Tensor.read_async)."""

    def __init__(self, array, event):
        self._array = array
        self._event = event

    def wait(self):
        """The array, once the copy has finished."""
        if self._event is not None:
            self._event.wait()
            self._event = None
        return self._array


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


def _contiguous_strides(shape):
    strides, step = [], 1
    for extent in reversed(shape):
        strides.append(step)
        step *= extent
    return tuple(reversed(strides))


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
