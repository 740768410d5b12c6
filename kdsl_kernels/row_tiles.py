"""The row-tiled layout the CPU GEMVs read (FP4 and int8 weights).

Rows go in tiles of ROW_TILE, and within a tile group by group, the tile's
rows one after another: row r's group g is block
(r // ROW_TILE * n_groups + g) * ROW_TILE + r % ROW_TILE. A program reading
a tile group by group so walks one contiguous stream, which the CPU's
prefetchers follow; in the row layout its rows were ROW_TILE streams.
"""
import numpy as np

ROW_TILE = 8          # rows per tile


def row_tiled(a, n_groups, inner):
    """a, [N, n_groups * inner] values per row (codes, or one scale per group),
    as the flat row-tiled array: N padded with zero rows to a multiple of
    ROW_TILE, each block's `inner` values together."""
    n = a.shape[0]
    rows = -(-n // ROW_TILE) * ROW_TILE
    padded = np.zeros((rows, n_groups, inner), a.dtype)
    padded[:n] = a.reshape(n, n_groups, inner)
    return np.ascontiguousarray(
        padded.reshape(rows // ROW_TILE, ROW_TILE, n_groups, inner)
        .transpose(0, 2, 1, 3)).reshape(-1)
