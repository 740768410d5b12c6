"""Compile a kernel for one launch's argument types and run it on the device.

A compiled kernel is cached per specialisation: argument dtypes, which int
arguments equal 1 or are multiples of 16 (as Triton does), constexpr values,
num_threads and the device. The OpenCL binary is cached on disk (kdsl.cache).
"""
import math
import struct

import numpy as np
import pyopencl as cl

from . import ir
from . import language as kl
from .cache import build_program
from .checker import check
from .codegen_opencl import c_kernel_name, generate
from .device import current_device
from .device_features import has_inline_ptx, has_int16_pair_dot
from .errors import LaunchError
from .relaunch import Relaunch, int_spec
from .simplify import remove_proven_masks
from .tensor import Tensor, tensor


def _spec_of(value, is_constexpr):
    """The part of the specialisation key one argument contributes."""
    if is_constexpr:
        return ("c", repr(value))
    if isinstance(value, (Tensor, np.ndarray)):
        return ("p", value.dtype)
    if isinstance(value, (bool, np.bool_)):
        return ("b",)
    if isinstance(value, (int, np.integer)):
        return int_spec(int(value))
    return ("f",)


# pyopencl's Kernel.set_arg infers how to pass a numpy scalar on every call
# (18 us each, measured on pyopencl 2026.1: more than the launch itself);
# handing it the packed bytes costs under 1 us. _set_arg_buf is pyopencl's own
# path for that, not public API, so a pyopencl without it gets set_arg.
_FAST_SET = hasattr(cl.Kernel, "_set_arg_buf")
_PACK_INT32 = struct.Struct("=i").pack
_STRUCT_CODES = {("i", 1): "b", ("u", 1): "B", ("i", 2): "h", ("u", 2): "H", ("i", 4): "i",
                 ("u", 4): "I", ("i", 8): "q", ("u", 8): "Q", ("f", 2): "e", ("f", 4): "f",
                 ("f", 8): "d", ("b", 1): "?"}


def scalar_setter(dtype):
    """set(kernel, index, value): pass a number as an OpenCL argument of the
    kernel parameter's kl dtype (a bool goes as an int32 0 or 1)."""
    if dtype.is_bool:
        int32 = scalar_setter(kl.int32)
        return lambda kernel, index, value: int32(kernel, index, bool(value))
    np_dtype = dtype.np
    code = _STRUCT_CODES.get((np_dtype.kind, np_dtype.itemsize))
    if _FAST_SET and code is not None:
        pack = struct.Struct("=" + code).pack
        if np_dtype.kind in "iu":
            return lambda kernel, index, value: kernel._set_arg_buf(index, pack(int(value)))

        def set_float(kernel, index, value):
            try:
                data = pack(float(value))
            except OverflowError:             # past the type's range: inf, as numpy rounds it
                data = np_dtype.type(value).tobytes()
            kernel._set_arg_buf(index, data)
        return set_float
    return lambda kernel, index, value: kernel.set_arg(index, np_dtype.type(value))


def set_offset(kernel, index, offset):
    """Pass a tensor's element offset (an int32 argument beside its buffer)."""
    if _FAST_SET:
        kernel._set_arg_buf(index, _PACK_INT32(offset))
    else:
        kernel.set_arg(index, np.int32(offset))


def default_num_threads(kernel_ir, device):
    """Enough work-items for the largest block, capped by the device and at 128."""
    biggest = max((v.numel for v in ir.walk_values(kernel_ir.body) if v.shape), default=1)
    cap = 128 if device.is_gpu else 64
    cap = min(cap, device.max_work_group_size)
    n = 1
    while n < min(biggest, cap):
        n *= 2
    return n


class CompiledKernel:
    """A built OpenCL kernel plus how to pass each argument to it."""

    def __init__(self, jit_fn, kernel_ir, source, program, num_threads, device):
        self.name = kernel_ir.name
        self.source = source
        self.num_threads = num_threads
        self.device = device
        self.program = program
        self.cl_kernel = cl.Kernel(program, kernel_ir.name)
        self.params = [(name, v.is_ptr, v.dtype) for name, v in kernel_ir.params]
        # per parameter: its name, OpenCL argument index, and for a pointer None,
        # else how to pass the number (kdsl.prepared reuses these)
        self.slots = []
        index = 0
        for name, is_ptr, dtype in self.params:
            self.slots.append((name, index, None if is_ptr else scalar_setter(dtype)))
            index += 2 if is_ptr else 1
        self._last = [None] * len(self.params)      # what each argument was last set to

    def __call__(self, grid, values, queue=None):
        """Enqueue on the device's queue; returns the OpenCL event."""
        # Only arguments that differ from this kernel's previous launch are set
        # again: a decode step relaunches the same kernels on the same buffers.
        kernel, last = self.cl_kernel, self._last
        for slot, (name, index, setter) in enumerate(self.slots):
            v = values[name]
            if setter is None:
                key = (v.buffer.int_ptr, v.offset)
                if last[slot] != key:
                    kernel.set_arg(index, v.buffer)
                    set_offset(kernel, index + 1, v.offset)
                    last[slot] = key
                continue
            # compared as given (with its type: 1 and 1.0 and True differ; and
            # with a zero's sign, which == ignores)
            key = (type(v), v)
            if type(v) is float and v == 0.0:
                key = (float, v, math.copysign(1.0, v))
            if last[slot] != key:
                setter(kernel, index, v)
                last[slot] = key
        local = (self.num_threads, 1, 1)
        global_size = (grid[0] * self.num_threads, grid[1], grid[2])
        if 0 in global_size:
            return None
        return cl.enqueue_nd_range_kernel(queue or self.device.queue, self.cl_kernel,
                                          global_size, local)


def compile_kernel(jit_fn, values, num_threads=None, device=None):
    """Check, generate and build `jit_fn` for these argument values."""
    device = device or current_device()
    key = (device.fingerprint, num_threads) + tuple(
        [_spec_of(values[n], is_constexpr) for n, is_constexpr in jit_fn._params])
    compiled = jit_fn._compiled.get(key)
    if compiled is not None:
        return compiled
    kernel_ir = check(jit_fn, values, num_threads or 1)
    kernel_ir.name = c_kernel_name(kernel_ir.name)
    threads = num_threads or default_num_threads(kernel_ir, device)
    if threads > device.max_work_group_size:
        raise LaunchError(f"{jit_fn.__name__}: num_threads={threads} exceeds the device's "
                          f"maximum work-group size {device.max_work_group_size}")
    kernel_ir.num_threads = threads
    remove_proven_masks(kernel_ir)
    source = generate(kernel_ir, {"is_cpu": device.is_cpu, "has_fp16": device.has_fp16,
                                  # asked (and probed) only by kernels that could use it
                                  "int16_pair_dot": lambda: has_int16_pair_dot(device),
                                  "inline_ptx": lambda: has_inline_ptx(device)})
    program = build_program(device, source, kernel_ir.name)
    compiled = CompiledKernel(jit_fn, kernel_ir, source, program, threads, device)
    jit_fn._compiled[key] = compiled
    return compiled


def launch(jit_fn, grid, values, num_threads, args=(), kwargs=None):
    """Run a kernel launch: numpy arrays are copied in and, after the kernel, back.

    A launch of device tensors and plain numbers leaves `jit_fn._relaunch`,
    the shortcut its next launch with alike arguments takes (kdsl.relaunch)."""
    device = current_device()
    host_arrays = {}
    for name, is_constexpr in jit_fn._params:
        v = values[name]
        if type(v) is Tensor and v.device is device:
            continue
        if isinstance(v, np.ndarray) and not is_constexpr:
            host_arrays[name] = v
            values[name] = tensor(np.ascontiguousarray(v), dtype=v.dtype)
        elif isinstance(v, Tensor) and v.device.fingerprint != device.fingerprint:
            raise LaunchError(f"{jit_fn.__name__}(): tensor '{name}' lives on {v.device}, "
                              f"the kernel runs on {device}")
    compiled = compile_kernel(jit_fn, values, num_threads, device)
    event = compiled(grid, values)
    if not host_arrays and kwargs is not None and Relaunch.eligible(args, kwargs):
        jit_fn._relaunch = Relaunch(jit_fn, compiled, device, args, kwargs, values, num_threads)
    for name, arr in host_arrays.items():
        arr[...] = values[name].numpy().reshape(arr.shape)
    return event
