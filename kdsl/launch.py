"""Compile a kernel for one launch's argument types and run it on the device.

A compiled kernel is cached per specialisation: argument dtypes, which int
arguments equal 1 or are multiples of 16 (as Triton does), constexpr values,
num_threads and the device. The OpenCL binary is cached on disk (kdsl.cache).
"""
import numpy as np
import pyopencl as cl

from . import ir
from .cache import build_program
from .checker import check
from .codegen_opencl import c_kernel_name, generate
from .device import current_device
from .errors import LaunchError
from .simplify import remove_proven_masks
from .tensor import Tensor, tensor


def _spec_of(value, is_constexpr):
    """The part of the specialisation key one argument contributes."""
    if is_constexpr:
        return ("c", repr(value))
    if isinstance(value, (Tensor, np.ndarray)):
        return ("p", str(value.dtype))
    if isinstance(value, (bool, np.bool_)):
        return ("b",)
    if isinstance(value, (int, np.integer)):
        v = int(value)
        return ("i", v == 1, v % 16 == 0, -2**31 <= v < 2**31)
    return ("f",)


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
        self._last = [None] * len(self.params)      # what each argument was last set to

    def __call__(self, grid, values, queue=None):
        """Enqueue on the device's queue; returns the OpenCL event."""
        # Only arguments that differ from this kernel's previous launch are set
        # again: a decode step relaunches the same kernels on the same buffers.
        kernel, last = self.cl_kernel, self._last
        index = 0
        for slot, (name, is_ptr, dtype) in enumerate(self.params):
            v = values[name]
            if is_ptr:
                key = (v.buffer.int_ptr, v.offset)
                if last[slot] != key:
                    kernel.set_arg(index, v.buffer)
                    kernel.set_arg(index + 1, np.int32(v.offset))
                    last[slot] = key
                index += 2
                continue
            if dtype.is_bool:
                v = np.int32(bool(v))
            else:
                v = dtype.np.type(v)
            if last[slot] is None or last[slot] != v or type(last[slot]) is not type(v):
                kernel.set_arg(index, v)
                last[slot] = v
            index += 1
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
        _spec_of(values[n], n in jit_fn.constexpr_names) for n in jit_fn.arg_names)
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
    source = generate(kernel_ir, {"is_cpu": device.is_cpu, "has_fp16": device.has_fp16})
    program = build_program(device, source, kernel_ir.name)
    compiled = CompiledKernel(jit_fn, kernel_ir, source, program, threads, device)
    jit_fn._compiled[key] = compiled
    return compiled


def launch(jit_fn, grid, values, num_threads):
    """Run a kernel launch: numpy arrays are copied in and, after the kernel, back."""
    device = current_device()
    host_arrays = {}
    for name in jit_fn.arg_names:
        v = values[name]
        if isinstance(v, np.ndarray) and name not in jit_fn.constexpr_names:
            host_arrays[name] = v
            values[name] = tensor(np.ascontiguousarray(v), dtype=v.dtype)
        elif isinstance(v, Tensor) and v.device is not device \
                and v.device.fingerprint != device.fingerprint:
            raise LaunchError(f"{jit_fn.__name__}(): tensor '{name}' lives on {v.device}, "
                              f"the kernel runs on {device}")
    compiled = compile_kernel(jit_fn, values, num_threads, device)
    event = compiled(grid, values)
    for name, arr in host_arrays.items():
        arr[...] = values[name].numpy().reshape(arr.shape)
    return event
