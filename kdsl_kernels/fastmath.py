"""exp for the non-positive arguments of softmax and attention, cheaper than the device's on a CPU.

After the row maximum is subtracted, every exponent softmax and the online
softmax of attention take is <= 0 (or -inf for a masked entry, or nan).
PoCL's exp (its kernel library's 8-wide SLEEF-style routine) handles the
whole float range and costs about a third of a softmax's time on this CPU;
`exp_nonpositive` computes the same values in fewer instructions:
e**x = 2**n * e**r with n = round(x / ln 2) (rounded by adding 1.5 * 2**23),
r = x - n ln 2 in two steps (Cody and Waite), e**r as 1 + r + r**2 P(r)
with P of degree 4 (a minimax fit of the relative error over |r| <= ln 2 / 2
by Lawson's iteration, 3.7e-9; Cephes' expf takes degree 5, one FMA more,
for no ulp this needs), and the multiply by 2**n as an integer add of n to
the exponent field of e**r's bits. Within 0.96 ulp of e**x for -87.3 <= x
<= 0 (PoCL's exp: 0.96); below -87.3365 (= ln of the smallest normal float) it
returns 0 where e**x is a denormal (below 1.2e-38; a softmax's sum is at
least 1). Not for x > 88, where the exponent field overflows. A nan
argument gives nan when its 9 lowest payload bits are zero, as for every
nan arithmetic makes (x - max of a nan included); a hand-made payload
there would be added into the exponent.

Which exp a kernel uses is a config choice (EXP: "poly" or "lib"): the
polynomial wins in softmax on PoCL (16384 x 512: 2.60-2.65 against
2.92-2.94 ms); a GPU's exp is a few instructions around its hardware exp2,
so GPUs keep the library's. The CPU attention kernels keep it too: there the
code generator calls the library's exp on float8 operands, while the
polynomial's operations are written per slot and ran slower (PoCL, alternated
twice: 1x32x512x128 prefill 30.5 against 27.3 ms, SmolLM2's 64-query chunk
1.50 against 1.02 ms, .scratch/attn_exp_ab.py, 2026-12-07).
"""
import kdsl
import kdsl.language as kl

LOG2_E = 1.44269504088896341
ROUND = 12582912.0              # 1.5 * 2**23: adding it rounds |x| < 2**22 to an integer
LN2_HI = 0.693359375            # ln 2 = LN2_HI - LN2_LO, LN2_HI with few mantissa bits
LN2_LO = 2.12194440e-4
SMALLEST_NORMAL_LOG = -87.33654


@kdsl.jit
def exp_nonpositive(x, EXP: kl.constexpr):
    """e**x for x <= 0, -inf (0) and nan (nan): the polynomial with EXP == "poly", else kl.exp."""
    if EXP == "poly":
        t = kl.fma(x, LOG2_E, ROUND)
        n = t - ROUND
        r = kl.fma(n, -LN2_HI, x)
        r = kl.fma(n, LN2_LO, r)
        p = kl.fma(r, 1.3879687758e-3, 8.3687007427e-3)
        p = kl.fma(p, r, 4.1667226702e-2)
        p = kl.fma(p, r, 1.6666521132e-1)
        p = kl.fma(p, r, 4.9999997020e-1)
        p = kl.fma(p * r, r, r) + 1.0
        # t's low mantissa bits hold n + 0x400000; shifted by 23 (the 0x400000 and
        # t's exponent fall off the top) they are n in the exponent field, and
        # adding that to p's bits multiplies p by 2**n: exact while the result is
        # normal, which x >= SMALLEST_NORMAL_LOG guarantees (n >= -126, and where
        # n = -126, r >= 0 so p >= 1); one integer add where a float multiply by a
        # built 2**n took two ops. The int32 shift overflows by design: clang (PoCL,
        # NVIDIA) emits a plain shl, and int32 keeps it in the CPU's 8-wide code
        y = (p.to(kl.int32, bitcast=True) + (t.to(kl.int32, bitcast=True) << 23)).to(
            kl.float32, bitcast=True)
        y = kl.where(x < SMALLEST_NORMAL_LOG, 0.0, y)
    else:
        y = kl.exp(x)
    return y
