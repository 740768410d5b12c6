"""What a device's OpenCL compiler accepts beyond OpenCL C, found by building a probe.

The code generator asks these questions only when a kernel could use the
answer, so a device pays for a probe (one small build, then a cached binary)
only when it meets such a kernel.
"""
import functools

from .cache import build_program
from .errors import BuildError

# x86's pmaddwd (AVX2, 256-bit): 16 int16 products summed in pairs into 8 int32
# lanes, one instruction. Clang exposes it as a builtin in OpenCL C too, so
# PoCL on an x86 CPU with AVX2 compiles it; every other device refuses it.
_INT16_PAIR_DOT_PROBE = """
__kernel void kdsl_probe_int16_pair_dot(__global const short* a, __global int* out)
{
    const short16 x = vload16(0, a);
    vstore8(__builtin_ia32_pmaddwd256(x, x), 0, out);
}
"""


# GCC-style inline PTX, which NVIDIA's OpenCL compiler takes (kl.inline_asm_elementwise)
_INLINE_PTX_PROBE = """
__kernel void kdsl_probe_inline_ptx(__global int* out)
{
    int v;
    asm("mov.b32 %0, %1;" : "=r"(v) : "r"(out[1]));
    out[0] = v;
}
"""


@functools.lru_cache(maxsize=None)
def _builds(device, source, name):
    try:
        build_program(device, source, name)
    except BuildError:
        return False
    return True


def has_int16_pair_dot(device):
    """Whether `device` compiles __builtin_ia32_pmaddwd256 (x86 AVX2 through PoCL)."""
    return device.is_cpu and _builds(device, _INT16_PAIR_DOT_PROBE,
                                     "kdsl_probe_int16_pair_dot")


def has_inline_ptx(device):
    """Whether `device` compiles inline PTX in OpenCL C (NVIDIA's OpenCL does).
    Only NVIDIA's platform is probed: PoCL 3.1's x86 back end crashed the
    process (a segfault in clBuildProgram) on the probe's asm about half the
    time, where it should have reported a build error."""
    if "nvidia" not in getattr(device, "platform_name", "").lower():
        return False
    return _builds(device, _INLINE_PTX_PROBE, "kdsl_probe_inline_ptx")
