"""Scratch buffers that kernels of one kind share on a device.

Launches on a device run one after another on its in-order queue, so the
temporaries of one call (the FP4 GEMM's dequantised tiles, the matmul's
packed B panels) can live in one buffer per purpose and device rather than
be allocated per call (a fresh buffer costs page faults on first touch). A
buffer only grows: launches an engine has recorded keep the buffer they were
recorded with, which stays valid.
"""
import numpy as np

import kdsl

_BUFFERS = {}


def scratch(purpose, device, n, minimum=1 << 20, dtype=np.float32):
    """A 1-D device buffer of at least `n` elements of `dtype` (at least
    `minimum` when first made) for `purpose` on `device`, reused by every
    call that asks."""
    key = (purpose, device.fingerprint)
    buf = _BUFFERS.get(key)
    if buf is None or buf.size < n or buf.dtype != np.dtype(dtype):
        buf = kdsl.empty((max(n, minimum),), dtype, device=device)
        _BUFFERS[key] = buf
    return buf
