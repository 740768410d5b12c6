"""A first kernel: vector addition on the default device, checked against numpy.

    python3 -m kdsl.demo

Prints the device, the result's first values, whether it matches numpy, the
first launch's time (compile, or load from the program cache) and the time
and bandwidth of later launches.
"""
import sys
import time

import numpy as np

import kdsl
import kdsl.language as kl


@kdsl.jit
def add_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: kl.constexpr):
    pid = kl.program_id(0)
    offs = pid * BLOCK + kl.arange(0, BLOCK)
    mask = offs < n
    x = kl.load(x_ptr + offs, mask=mask, other=0.0)
    y = kl.load(y_ptr + offs, mask=mask, other=0.0)
    kl.store(out_ptr + offs, x + y, mask=mask)


def main(n=1 << 20, block=256, repeats=20):
    """Run, check and time add_kernel; returns the exit status (0 when it matches numpy).

    >>> main(n=1000)
    0
    """
    device = kdsl.current_device()
    print(f"device: {device!r}")
    rng = np.random.default_rng(0)
    x_host = rng.standard_normal(n, dtype=np.float32)
    y_host = rng.standard_normal(n, dtype=np.float32)
    x, y = kdsl.tensor(x_host), kdsl.tensor(y_host)
    out = kdsl.empty((n,), dtype=np.float32)
    grid = (kdsl.cdiv(n, block),)

    first_seconds = _timed(device, lambda: add_kernel[grid](x, y, out, n, BLOCK=block))
    result = out.numpy()
    matches = np.allclose(result, x_host + y_host)
    print(f"out[:4] = {result[:4]}  (numpy: {(x_host + y_host)[:4]})")
    print(f"matches numpy: {matches}")

    def launches():
        for _ in range(repeats):
            add_kernel[grid](x, y, out, n, BLOCK=block)
    per_launch = _timed(device, launches) / repeats
    moved = 3 * n * np.dtype(np.float32).itemsize
    print(f"first launch (compile or cache load): {first_seconds * 1e3:.1f} ms")
    print(f"later launches: {per_launch * 1e6:.1f} us each, {moved / per_launch / 1e9:.2f} GB/s "
          f"for n={n}")
    return 0 if matches else 1


def _timed(device, work):
    start = time.perf_counter()
    work()
    device.queue.finish()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
