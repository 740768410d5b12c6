"""Masks proven always true by sympy vanish from the generated OpenCL; unproven ones stay.

Results must not change either way, so every case also runs against numpy.
"""
import re

import numpy as np
import pytest

import kdsl
import kdsl.language as kl
from kdsl.launch import compile_kernel


@kdsl.jit
def row_sums(x_ptr, out_ptr, K, BLOCK_K: kl.constexpr):
    """One program per row; the k loop's mask holds whenever BLOCK_K divides K."""
    row = kl.program_id(0)
    acc = kl.zeros((BLOCK_K,), kl.float32)
    for k in range(0, K, BLOCK_K):
        offs_k = k + kl.arange(0, BLOCK_K)
        acc += kl.load(x_ptr + row * K + offs_k, mask=offs_k < K, other=0.0)
    kl.store(out_ptr + row, kl.sum(acc, 0))


@kdsl.jit
def head_copy(x_ptr, out_ptr, n, HEAD: kl.constexpr, BLOCK: kl.constexpr):
    """`d < HEAD` holds when HEAD == BLOCK; `offs < n` never can be proven."""
    pid = kl.program_id(0)
    d = kl.arange(0, BLOCK)
    kl.store(out_ptr + pid * HEAD + d, kl.load(x_ptr + pid * HEAD + d, mask=d < HEAD), mask=d < HEAD)


def _source(fn, *args, **constexprs):
    values, num_threads = fn.bind(args, constexprs)
    return compile_kernel(fn, values, num_threads).source


@pytest.mark.parametrize("K, BLOCK_K, proven", [(64, 16, True), (64, 8, True), (48, 16, True),
                                                 (50, 16, False), (64, 32, False)])
def test_k_loop_mask_removed_only_when_provable(K, BLOCK_K, proven):
    x = np.random.default_rng(0).standard_normal((3, K)).astype(np.float32)
    out = kdsl.empty((3,))
    source = _source(row_sums, kdsl.tensor(x), out, K, BLOCK_K=BLOCK_K)
    assert (re.search(r"offs_k\w* < K", source) is None) == proven, source
    row_sums[(3,)](kdsl.tensor(x), out, K, BLOCK_K=BLOCK_K)
    np.testing.assert_allclose(out.numpy(), x.sum(1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("HEAD, BLOCK, proven", [(64, 64, True), (48, 64, False)])
def test_constexpr_bound_mask(HEAD, BLOCK, proven):
    x = np.arange(4 * HEAD, dtype=np.float32)
    out = kdsl.zeros((4 * HEAD,))
    source = _source(head_copy, kdsl.tensor(x), out, 4 * HEAD, HEAD=HEAD, BLOCK=BLOCK)
    assert (re.search(r"\bd\w* < (48|64)", source) is None) == proven, source
    head_copy[(4,)](kdsl.tensor(x), out, 4 * HEAD, HEAD=HEAD, BLOCK=BLOCK)
    np.testing.assert_array_equal(out.numpy(), x)
