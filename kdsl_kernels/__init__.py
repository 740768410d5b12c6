"""The kernel library, written in the kdsl kernel language: one module per kernel family.

Every entry point takes and returns kdsl device tensors (numpy arrays are
copied to the device), accepts `out=` (a tensor, possibly a strided view,
written in place and returned) and `config=` (constexprs and num_threads;
None picks the device's default).

    >>> import kdsl_kernels as kk
    >>> h = kk.embedding(ids, embed_tokens)
    >>> x = kk.rms_norm(h, w, 1e-6)
    >>> o = kk.attention(q, k, v, causal=True)
"""
from .activations import gelu_tanh_mul, swiglu
from .argmax import argmax
from .attention import attention
from .elementwise import add, copy, embedding
from .matmul import matmul
from .norms import add_rms_norm, layer_norm, rms_norm
from .rope import rope, rope_qkv
from .softmax import softmax

__all__ = ["add", "add_rms_norm", "argmax", "attention", "copy", "embedding", "gelu_tanh_mul",
           "layer_norm", "matmul", "rms_norm", "rope", "rope_qkv", "softmax", "swiglu"]
