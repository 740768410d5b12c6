"""Matrix multiply in the kernel language: tiled GEMM and a bandwidth-bound GEMV.

`matmul(a, b, trans_b=False, bias=None, out=None)` computes a @ b (or
a @ b.T for weights stored [N, K], the layout of a linear layer) for 2-D or
batched 3-D operands in fp32 or fp16 storage, accumulating in fp32.

Three kernels: matmul_kernel (tiles of C straight from A and B, any layout),
the packed pair pack_panels_kernel + panels_kernel (B first copied into
contiguous fp32 panels, a CPU's choice for larger M: config pack_b), and
gemv_kernel for M = 1.
"""
import numpy as np

import kdsl
import kdsl.language as kl

from .configs import blocks_per_program, matmul_config, gemv_config
from .scratch import scratch


@kdsl.jit
def store_tile(c_ptr, acc, bias_ptr, rm, rn, M, N, stride_cm, HAS_BIAS: kl.constexpr,
               EVEN: kl.constexpr):
    """C[rm, rn] = acc (+ bias[rn]); masked to M x N unless EVEN."""
    if HAS_BIAS:
        acc += kl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    c_ptrs = c_ptr + rm[:, None] * stride_cm + rn[None, :]
    if EVEN:
        kl.store(c_ptrs, acc)
    else:
        kl.store(c_ptrs, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


@kdsl.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, bias_ptr, M, N, K,
                  stride_am, stride_ak, stride_bk, stride_bn, stride_cm,
                  batch_a, batch_b, batch_c,
                  HAS_BIAS: kl.constexpr, EVEN: kl.constexpr,
                  BM: kl.constexpr, BN: kl.constexpr, BK: kl.constexpr):
    """C[b] = A[b] @ B[b] (+ bias) for one BM x BN tile of C per program."""
    pid_m = kl.program_id(0)
    pid_n = kl.program_id(1)
    batch = kl.program_id(2)
    a_base = a_ptr + batch * batch_a
    b_base = b_ptr + batch * batch_b
    rm = pid_m * BM + kl.arange(0, BM)
    rn = pid_n * BN + kl.arange(0, BN)
    rk = kl.arange(0, BK)
    acc = kl.zeros((BM, BN), dtype=kl.float32)
    for k in range(0, K, BK):
        # offsets written out per step (not hoisted): PoCL's vectoriser then
        # sees consecutive addresses along the contiguous axis
        kk = k + rk
        a_ptrs = a_base + rm[:, None] * stride_am + kk[None, :] * stride_ak
        b_ptrs = b_base + kk[:, None] * stride_bk + rn[None, :] * stride_bn
        if EVEN:
            a = kl.load(a_ptrs)
            b = kl.load(b_ptrs)
        else:
            a = kl.load(a_ptrs, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            b = kl.load(b_ptrs, mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc += kl.dot(a, b)
    store_tile(c_ptr + batch * batch_c, acc, bias_ptr, rm, rn, M, N, stride_cm, HAS_BIAS, EVEN)


@kdsl.jit
def pack_panels_kernel(b_ptr, p_ptr, N, K, Kp, stride_bk, stride_bn, batch_b, batch_p,
                       TRANS: kl.constexpr, EVEN: kl.constexpr, BN: kl.constexpr,
                       BK: kl.constexpr):
    """P[batch, n // BN, k, n % BN] = B[batch, k, n] as fp32, zero for k >= K
    and n >= N: program (j, batch) copies panel j, the K x BN block of B's
    columns j*BN .. j*BN + BN-1, as Kp contiguous rows of BN. TRANS: B is
    stored [N, K] (K contiguous), so the tile is read as BN runs along K and
    transposed in registers, not gathered element by element."""
    pid_n = kl.program_id(0)
    batch = kl.program_id(1)
    rn = pid_n * BN + kl.arange(0, BN)
    rk = kl.arange(0, BK)
    b_base = b_ptr + batch * batch_b
    panel = p_ptr + batch * batch_p + pid_n * (Kp * BN)
    for k in range(0, Kp, BK):
        kk = k + rk
        if TRANS:
            ptrs = b_base + rn[:, None] * stride_bn + kk[None, :] * stride_bk
            if EVEN:
                tile = kl.trans(kl.load(ptrs))
            else:
                tile = kl.trans(kl.load(ptrs, mask=(rn[:, None] < N) & (kk[None, :] < K),
                                        other=0.0))
        else:
            ptrs = b_base + kk[:, None] * stride_bk + rn[None, :] * stride_bn
            if EVEN:
                tile = kl.load(ptrs)
            else:
                tile = kl.load(ptrs, mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        kl.store(panel + kk[:, None] * BN + kl.arange(0, BN)[None, :], tile)


@kdsl.jit
def panels_kernel(a_ptr, p_ptr, c_ptr, bias_ptr, M, N, K, Kp, stride_am, stride_ak, stride_cm,
                  batch_a, batch_p, batch_c, HAS_BIAS: kl.constexpr, EVEN: kl.constexpr,
                  BM: kl.constexpr, BN: kl.constexpr, BK: kl.constexpr):
    """C[b] = A[b] @ B[b] (+ bias) for one BM x BN tile of C per program, B read
    from its packed panels (pack_panels_kernel): the program's K x BN panel is
    one contiguous run. Read in place, the same panel is K pieces of BN floats
    N floats apart; at a power-of-two N they map to a few cache sets and the
    panel falls out of L1 and L2. Programs along M share a panel, which stays
    in L2."""
    pid_m = kl.program_id(0)
    pid_n = kl.program_id(1)
    batch = kl.program_id(2)
    rm = pid_m * BM + kl.arange(0, BM)
    rn = pid_n * BN + kl.arange(0, BN)
    rj = kl.arange(0, BN)
    rk = kl.arange(0, BK)
    a_base = a_ptr + batch * batch_a
    panel = p_ptr + batch * batch_p + pid_n * (Kp * BN)
    acc = kl.zeros((BM, BN), dtype=kl.float32)
    for k in range(0, K, BK):
        kk = k + rk
        a_ptrs = a_base + rm[:, None] * stride_am + kk[None, :] * stride_ak
        if EVEN:
            a = kl.load(a_ptrs)
        else:
            a = kl.load(a_ptrs, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        # the products accumulate onto acc inside the dot: written `acc +=
        # kl.dot(a, b)`, PoCL's LLVM permuted every B vector and spilled the
        # tile (1360 stack accesses against 46; 512^3 150-173 against 189-195
        # GFLOP/s, .scratch/s18/mm_acc.py). matmul_kernel keeps the add: written
        # this way its 8 x 8 tiles of a [N, K] weight ran 6x slower (M = 16, 11.4
        # against 68.9 GFLOP/s, bench/matmul.py --quick)
        acc = kl.dot(a, kl.load(panel + kk[:, None] * BN + rj[None, :]), acc)
    store_tile(c_ptr + batch * batch_c, acc, bias_ptr, rm, rn, M, N, stride_cm, HAS_BIAS, EVEN)


@kdsl.jit
def gemv_kernel(x_ptr, w_ptr, y_ptr, bias_ptr, N, K, stride_wn, stride_wk,
                HAS_BIAS: kl.constexpr, EVEN: kl.constexpr,
                BN: kl.constexpr, BK: kl.constexpr, T: kl.constexpr):
    """y = W x (+ bias) for T blocks of BN rows of W per program, one block
    after another; W is read once, so this runs at memory bandwidth. Partial
    sums stay elementwise in a BN x BK block and are reduced across K once
    at the end. T > 1 is for CPUs: a program then walks one contiguous run
    of W (the rows of its blocks are adjacent), which the prefetchers follow
    from start to end, and pays its start-up once for T blocks."""
    rk = kl.arange(0, BK)
    for t in range(0, T):
        rn = (kl.program_id(0) * T + t) * BN + kl.arange(0, BN)
        w_offs = rn[:, None] * stride_wn + rk[None, :] * stride_wk
        acc = kl.zeros((BN, BK), dtype=kl.float32)
        for k in range(0, K, BK):
            if EVEN:
                x = kl.load(x_ptr + k + rk)
                w = kl.load(w_ptr + k * stride_wk + w_offs)
            else:
                x = kl.load(x_ptr + k + rk, mask=k + rk < K, other=0.0)
                w = kl.load(w_ptr + k * stride_wk + w_offs,
                            mask=(rn[:, None] < N) & (k + rk[None, :] < K), other=0.0)
            acc += w * x[None, :]
        y = kl.sum(acc, axis=1)
        if HAS_BIAS:
            y += kl.load(bias_ptr + rn, mask=rn < N, other=0.0)
        if EVEN:
            kl.store(y_ptr + rn, y)
        else:
            kl.store(y_ptr + rn, y, mask=rn < N)


def launch_gemv(x, w, out, bias, cfg, stride_wn, stride_wk):
    """Enqueue gemv_kernel for out = w x (+ bias) under config `cfg` (w's rows
    `stride_wn` apart); returns its event. matmul() is the checked, public
    form; benchmarks call this for the device time."""
    N, K = out.shape[-1], x.shape[-1]
    blocks = kdsl.cdiv(N, cfg["BN"])
    T = blocks_per_program(cfg, blocks, x.device)
    even = N % (cfg["BN"] * T) == 0 and K % cfg["BK"] == 0
    return gemv_kernel[(kdsl.cdiv(blocks, T),)](
        x, w, out, bias if bias is not None else out, N, K, stride_wn, stride_wk,
        HAS_BIAS=bias is not None, EVEN=even, BN=cfg["BN"], BK=cfg["BK"], T=T,
        num_threads=cfg["num_threads"])


def _as_tensor(x, name):
    if isinstance(x, kdsl.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return kdsl.tensor(x)
    raise TypeError(f"matmul(): {name} must be a kdsl.Tensor or numpy array, got "
                    f"{type(x).__name__}")


def matmul(a, b, *, out=None, trans_b=False, bias=None, config=None):
    """a @ b (or a @ b.T with trans_b=True) on the device, accumulated in fp32.

    a: [M, K] or [batch, M, K]; b: [K, N] ([N, K] with trans_b), or batched
    [batch, K, N]; fp32 or fp16 storage; either may be a strided view. bias:
    [N]. Returns a float32 tensor [M, N] ([batch, M, N]), written into `out`
    when given (any view whose rows are contiguous).

    >>> c = matmul(kdsl.tensor(a), kdsl.tensor(w), trans_b=True)   # a @ w.T
    """
    a, b = _as_tensor(a, "a"), _as_tensor(b, "b")
    if a.ndim not in (2, 3) or b.ndim not in (2, 3):
        raise ValueError(f"matmul(): operands must be 2-D or batched 3-D, got shapes "
                         f"{a.shape} and {b.shape}")
    batch = a.shape[0] if a.ndim == 3 else 1
    if b.ndim == 3 and (a.ndim != 3 or b.shape[0] != batch):
        raise ValueError(f"matmul(): batch sizes differ: {a.shape} and {b.shape}")
    M, K = a.shape[-2:]
    N, Kb = (b.shape[-2], b.shape[-1]) if trans_b else (b.shape[-1], b.shape[-2])
    if K != Kb:
        raise ValueError(f"matmul(): inner dimensions differ: a is {a.shape}, b is {b.shape}"
                         f"{' (trans_b)' if trans_b else ''}")
    out_shape = (batch, M, N) if a.ndim == 3 else (M, N)
    if out is None:
        out = kdsl.empty(out_shape, np.float32, device=a.device)
    elif tuple(out.shape) != out_shape or out.dtype != np.float32:
        raise ValueError(f"matmul(): out must be float32 {out_shape}, got {out.dtype} "
                         f"{tuple(out.shape)}")
    if bias is not None:
        bias = _as_tensor(bias, "bias")
        if tuple(bias.shape) != (N,):
            raise ValueError(f"matmul(): bias must have shape ({N},), got {bias.shape}")
        if N > 1 and bias.stride(0) != 1:
            raise ValueError(f"matmul(): bias must be contiguous, got stride {bias.stride(0)}")
    if out.size == 0:
        return out
    if K == 0:
        out.copy_from(np.zeros(out_shape, np.float32) + (bias.numpy() if bias is not None else 0))
        return out
    if out.stride(-1) != 1:
        raise ValueError(f"matmul(): out's rows must be contiguous (last stride 1), got strides "
                         f"{out.strides}")
    # operands may be strided views (a slice of a wider tensor, a transpose)
    stride_am, stride_ak = a.stride(-2), a.stride(-1)
    if trans_b:
        stride_bn, stride_bk = b.stride(-2), b.stride(-1)
    else:
        stride_bk, stride_bn = b.stride(-2), b.stride(-1)
    bias_arg = bias if bias is not None else out
    if M == 1 and batch == 1 and stride_ak == 1:
        launch_gemv(a, b, out, bias, config or gemv_config(N, K, trans_b, b_dtype=b.dtype),
                    stride_bn, stride_bk)
        return out
    cfg = config or matmul_config(M, N, K, trans_b, b_dtype=b.dtype)
    even = M % cfg["BM"] == 0 and N % cfg["BN"] == 0 and K % cfg["BK"] == 0
    grid = (kdsl.cdiv(M, cfg["BM"]), kdsl.cdiv(N, cfg["BN"]), batch)
    if cfg.get("pack_b"):
        _packed_matmul(a, b, out, bias, bias_arg, cfg, grid, even, stride_bk, stride_bn)
        return out
    matmul_kernel[grid](
        a, b, out, bias_arg, M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
        out.stride(-2), a.stride(0) if a.ndim == 3 else 0, b.stride(0) if b.ndim == 3 else 0,
        out.stride(0) if out.ndim == 3 else 0,
        HAS_BIAS=bias is not None, EVEN=even,
        BM=cfg["BM"], BN=cfg["BN"], BK=cfg["BK"], num_threads=cfg["num_threads"])
    return out


def _packed_matmul(a, b, out, bias, bias_arg, cfg, grid, even, stride_bk, stride_bn):
    """The pack_b path: B (any layout, fp32 or fp16) into fp32 panels of
    cfg's BN columns, K padded to BK, in a scratch buffer; then the GEMM."""
    M, K = a.shape[-2:]
    N = out.shape[-1]
    BN, BK = cfg["BN"], cfg["BK"]
    batch_b = grid[2] if b.ndim == 3 else 1
    Kp = kdsl.cdiv(K, BK) * BK
    per_batch = grid[1] * BN * Kp
    panels = scratch("matmul_panels", a.device, batch_b * per_batch)
    pack_panels_kernel[(grid[1], batch_b)](
        b, panels, N, K, Kp, stride_bk, stride_bn, b.stride(0) if b.ndim == 3 else 0,
        per_batch, TRANS=stride_bk == 1 and stride_bn != 1, EVEN=N % BN == 0 and K % BK == 0,
        BN=BN, BK=BK, num_threads=1)
    panels_kernel[grid](
        a, panels, out, bias_arg, M, N, K, Kp, a.stride(-2), a.stride(-1), out.stride(-2),
        a.stride(0) if a.ndim == 3 else 0, per_batch if b.ndim == 3 else 0,
        out.stride(0) if out.ndim == 3 else 0,
        HAS_BIAS=bias is not None, EVEN=even, BM=cfg["BM"], BN=BN, BK=BK,
        num_threads=cfg["num_threads"])
