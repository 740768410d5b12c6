"""Gated activations of a feed-forward block: SwiGLU (Llama) and GELU-tanh gating (Gemma).

`swiglu(gate, up)` = silu(gate) * up and `gelu_tanh_mul(gate, up)` =
gelu_tanh(gate) * up, elementwise over [M, I] (or any shape; views such as
the two halves of a fused gate/up projection work too, walked as in
`elementwise.launch_elementwise`).
"""
import math

import kdsl
import kdsl.language as kl

from .configs import tuned
from .elementwise import (as_tensor, check_out, dividing_block, elementwise_config,
                          launch_elementwise, load_block, new_out, store_block)

# gelu_tanh(x) = 0.5 x (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2 / pi), and
# 0.5 (1 + tanh(y)) = sigmoid(2 y), so it is x * sigmoid(2 c (x + 0.044715 x^3)).
GELU_2C = 2.0 * math.sqrt(2.0 / math.pi)


@kdsl.jit
def silu(x):
    return x * kl.sigmoid(x)


@kdsl.jit
def gelu_tanh(x):
    return x * kl.sigmoid(GELU_2C * (x + 0.044715 * x * x * x))


@kdsl.jit
def gated_kernel(gate_ptr, up_ptr, out_ptr, B, C, stride_g0, stride_g1, stride_u0, stride_u1,
                 stride_o0, stride_o1, ACT: kl.constexpr, BLOCK: kl.constexpr,
                 EVEN: kl.constexpr):
    """out = act(gate) * up for one BLOCK of the last dimension per program."""
    offs = kl.program_id(0) * BLOCK + kl.arange(0, BLOCK)
    j = kl.program_id(1)
    i = kl.program_id(2)
    gate = load_block(gate_ptr + i * stride_g0 + j * stride_g1 + offs, offs, C, EVEN)
    up = load_block(up_ptr + i * stride_u0 + j * stride_u1 + offs, offs, C, EVEN)
    if ACT == "silu":
        y = silu(gate) * up
    else:
        y = gelu_tanh(gate) * up
    store_block(out_ptr + i * stride_o0 + j * stride_o1 + offs, y, offs, C, EVEN)


def gated_config(C):
    """Tuned, else elementwise_config on a GPU; on a CPU one work-item over up to
    128 elements, the largest power of two dividing C where that is 16 or more
    (no masks). In one work-item the sigmoid's exp runs 8 wide (the code
    generator's vector math), which PoCL's work-group vectoriser left to
    scalar code: SwiGLU 512 x 11008 1.75 against 2.42 ms for 256-element
    blocks over 256 work-items, 128 x 1536 0.079 against 0.118 (PoCL, device
    time, 2026-12-07). Memory-bound elementwise kernels (add, copy) keep many
    work-items: one was 1.1-2x slower for them."""
    if not kdsl.current_device().is_cpu:
        return elementwise_config(C)
    return tuned("gated", {"C": C}, {"BLOCK": dividing_block(C, 128, 16), "num_threads": 1})


def _gated(gate, up, out, config, act, fn):
    gate, up = as_tensor(gate, fn, "gate"), as_tensor(up, fn, "up")
    if gate.shape != up.shape:
        raise ValueError(f"{fn}(): gate and up shapes differ: {gate.shape} and {up.shape}")
    out = new_out(gate.shape, gate.device) if out is None else check_out(out, gate.shape, fn)
    launch_elementwise(gated_kernel, [gate, up, out], config, gated_config, ACT=act)
    return out


def swiglu(gate, up, *, out=None, config=None):
    """silu(gate) * up, fp32; gate and up of one shape (fp32 or fp16 storage).

    >>> h = swiglu(gate_up[:, :I], gate_up[:, I:])
    """
    return _gated(gate, up, out, config, "silu", "swiglu")


def gelu_tanh_mul(gate, up, *, out=None, config=None):
    """gelu_tanh(gate) * up (GELU with the tanh approximation, as Gemma's MLP).

    >>> h = gelu_tanh_mul(gate, up)
    """
    return _gated(gate, up, out, config, "gelu_tanh", "gelu_tanh_mul")
