"""kdsl: a Triton-style kernel language for OpenCL.

    import kdsl, kdsl.language as kl

    @kdsl.jit
    def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: kl.constexpr):
        offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
        mask = offs < n
        kl.store(out_ptr + offs, kl.load(x_ptr + offs, mask=mask) + kl.load(y_ptr + offs, mask=mask), mask=mask)

    add_kernel[(kdsl.cdiv(n, 256),)](x, y, out, n, BLOCK=256)
"""
from . import language
from .autotuner import Config, autotune
from .capture import LaunchRecord, capture_launches
from .device import Device, current_device, devices, set_device
from .errors import BuildError, CompileError, LaunchError, OutOfBoundsError
from .jit import JITFunction, jit
from .language import cdiv
from .tensor import Tensor, empty, empty_like, full, ones, tensor, zeros, zeros_like

__all__ = ["language", "jit", "JITFunction", "cdiv", "devices", "current_device", "set_device",
           "Device", "tensor", "empty", "empty_like", "zeros", "zeros_like", "ones", "full",
           "Tensor", "CompileError", "LaunchError", "BuildError", "OutOfBoundsError",
           "autotune", "Config", "capture_launches", "LaunchRecord"]
