"""Which work-item holds which element of a block, in registers.

A Blocked layout (as in Triton) over a shape gives, per dimension:
  spt   elements per thread in one contiguous chunk,
  tpd   threads along the dimension,
  tdiv  the stride in the work-item id of this dimension's thread coordinate
        (tc = lid / tdiv % tpd), so unused work-item bits replicate the block.
A work-item holds reps = shape / (spt * tpd) chunks per dimension; its
*slots* are numbered row-major over the per-dimension slot coordinates
s in [0, reps * spt). The element a slot holds along a dimension is

    c = (s / spt) * spt * tpd + tc * spt + s % spt      (mod shape)

Reducing a dimension away, inserting a size-1 dimension and permuting
dimensions all give Blocked layouts again, so a reduction's result
broadcasts back (x - max[:, None]) without moving data.
"""
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Blocked:
    shape: tuple
    spt: tuple
    tpd: tuple
    tdiv: tuple
    num_threads: int

    @property
    def rank(self):
        return len(self.shape)

    @property
    def slot_dims(self):
        """Slot coordinates per dimension: reps * spt (never more than the size)."""
        return tuple(max(1, s // (p * t)) * p for s, p, t in zip(self.shape, self.spt, self.tpd))

    @property
    def nslots(self):
        n = 1
        for d in self.slot_dims:
            n *= d
        return n

    def slot_coords(self, r):
        """Per-dimension slot coordinates of flat slot r."""
        out = []
        for d in reversed(self.slot_dims):
            out.append(r % d)
            r //= d
        return tuple(reversed(out))

    def slot_index(self, coords):
        r = 0
        for c, d in zip(coords, self.slot_dims):
            r = r * d + c
        return r

    def slot_offset(self, r, dim):
        """The part of slot r's coordinate along dim that does not depend on the work-item."""
        s = self.slot_coords(r)[dim]
        return (s // self.spt[dim]) * self.spt[dim] * self.tpd[dim] + s % self.spt[dim]

    def wraps(self, dim):
        """True when the dimension has more thread chunks than elements (replication)."""
        return self.spt[dim] * self.tpd[dim] > self.shape[dim]

    def distinct_threads(self, dim):
        """How many work-item positions along dim hold distinct elements."""
        return min(self.tpd[dim], max(1, self.shape[dim] // self.spt[dim]))


def default_layout(shape, num_threads, vector=1):
    """Threads spread from the last (contiguous) dimension outwards, so that
    neighbouring work-items touch neighbouring addresses (coalesced on GPUs,
    vectorised across work-items by PoCL). With vector > 1 (kl.max_contiguous)
    each work-item first takes runs of `vector` consecutive elements in
    row-major order: the whole of as many trailing dimensions as the run
    covers, then a part of the next."""
    rank = len(shape)
    spt = [1] * rank
    run = vector
    for d in reversed(range(rank)):
        if run <= 1:
            break
        spt[d] = min(run, shape[d])
        if spt[d] < shape[d]:
            break
        run //= shape[d]
    tpd = [1] * rank
    tdiv = [1] * rank
    left, stride = num_threads, 1
    for d in reversed(range(rank)):
        t = min(left, max(1, shape[d] // spt[d]))
        tpd[d], tdiv[d] = t, stride
        stride *= t
        left //= t
    if left > 1 and rank:          # more threads than elements: the last dimension wraps
        d = rank - 1
        tpd[d] *= left
    # recompute strides with the final tpd
    stride = 1
    for d in reversed(range(rank)):
        tdiv[d] = stride
        stride *= tpd[d]
    return Blocked(tuple(shape), tuple(spt), tuple(tpd), tuple(tdiv), num_threads)


def remove_dim(layout, dim):
    """The layout of a reduction's result along dim: its thread bits replicate."""
    def drop(t):
        return t[:dim] + t[dim + 1:]
    return Blocked(drop(layout.shape), drop(layout.spt), drop(layout.tpd), drop(layout.tdiv),
                   layout.num_threads)


def insert_dim(layout, dim):
    """The layout with a size-1 dimension inserted (x[:, None])."""
    def ins(t, v):
        return t[:dim] + (v,) + t[dim:]
    return Blocked(ins(layout.shape, 1), ins(layout.spt, 1), ins(layout.tpd, 1),
                   ins(layout.tdiv, 1), layout.num_threads)


def permute(layout, perm):
    def p(t):
        return tuple(t[i] for i in perm)
    return Blocked(p(layout.shape), p(layout.spt), p(layout.tpd), p(layout.tdiv),
                   layout.num_threads)


def dot_layout(m, n, num_threads, tm=None):
    """Result layout of kl.dot: each work-item owns a register micro-tile.

    Work-items form a TM x TN grid (TN along the contiguous N axis); the
    micro-tile rows and columns are strided by TM and TN, so neighbouring
    work-items read neighbouring addresses of the operands. `tm`, where it
    fits, fixes the grid's rows (a kernel's dots with the same M share it,
    so per-row values pass between them without an exchange)."""
    if tm is not None and tm <= m and num_threads % tm == 0 and num_threads // tm <= n:
        tn = num_threads // tm
        return Blocked((m, n), (1, 1), (tm, tn), (tn, 1), num_threads)
    best = None
    tm = 1
    while tm <= num_threads:
        tn = num_threads // tm
        if tm <= m and tn <= n:
            cost = (m // tm + n // tn, -tn)
            if best is None or cost < best[0]:
                best = (cost, tm, tn)
        tm *= 2
    if best is None:                        # fewer elements than threads: replicate
        return default_layout((m, n), num_threads)
    _, tm, tn = best
    return Blocked((m, n), (1, 1), (tm, tn), (tn, 1), num_threads)


def dot_operand_layout(c_layout, k, operand):
    """The layout in which a work-item holds the A rows (operand 0) or B
    columns (operand 1) its micro-tile of C needs, for all k."""
    if operand == 0:
        return Blocked((c_layout.shape[0], k), (c_layout.spt[0], k), (c_layout.tpd[0], 1),
                       (c_layout.tdiv[0], 1), c_layout.num_threads)
    return Blocked((k, c_layout.shape[1]), (k, c_layout.spt[1]), (1, c_layout.tpd[1]),
                   (1, c_layout.tdiv[1]), c_layout.num_threads)


def owner_condition(layout):
    """A C condition on `lid` true in exactly one work-item per element of the
    block, or None when no element is held twice. Stores guard on it: where
    work-items replicate a slot (a reduction's result, a block smaller than
    the work-group), `kl.store(p, kl.load(p) + y)` in every replica would add
    y again in each replica that loads after another's store."""
    held_by = element_coords(layout)                 # [work-item, slot, dim]
    coords = held_by.reshape(-1, layout.rank)
    every = {tuple(c) for c in coords}
    if len(every) == len(coords):
        return None
    # the owner: each thread coordinate below its dimension's distinct count,
    # and no work-item bits outside the layout's coordinates
    lids = np.arange(layout.num_threads)
    owners = np.ones(layout.num_threads, bool)
    total = np.zeros(layout.num_threads, np.int64)
    parts, used = [], []
    for d in range(layout.rank):
        tc = lids // layout.tdiv[d] % layout.tpd[d]
        c_tc = f"(lid / {layout.tdiv[d]}) % {layout.tpd[d]}"
        if layout.distinct_threads(d) < layout.tpd[d]:
            owners &= tc < layout.distinct_threads(d)
            parts.append(f"{c_tc} < {layout.distinct_threads(d)}")
        total += tc * layout.tdiv[d]
        used.append(f"({c_tc}) * {layout.tdiv[d]}")
    owners &= total == lids
    parts.append(f"lid == {' + '.join(used)}")
    held = held_by[owners].reshape(-1, layout.rank)
    if len(held) != len(every) or {tuple(c) for c in held} != every:
        raise AssertionError(f"owner_condition: no single owner per element in {layout}")
    return " && ".join(f"({p})" for p in parts)


# -------------------------------------------------------------- enumeration
def _thread_coords(layout):
    """[T, rank] thread coordinate of every work-item along every dimension."""
    t = np.arange(layout.num_threads)[:, None]
    return (t // np.array(layout.tdiv)) % np.array(layout.tpd)


def element_coords(layout):
    """[T, nslots, rank] element coordinate held by each work-item in each slot."""
    tc = _thread_coords(layout)[:, None, :]
    slots = np.array([layout.slot_coords(r) for r in range(layout.nslots)]).reshape(
        layout.nslots, layout.rank)[None]
    spt, tpd, shape = np.array(layout.spt), np.array(layout.tpd), np.array(layout.shape)
    return ((slots // spt) * spt * tpd + tc * spt + slots % spt) % shape


def find_slots(layout, coords):
    """Slot of `layout` holding coords[t, i] in work-item t, or -1 where it does not."""
    if layout.rank == 0:
        return np.zeros(coords.shape[:2], dtype=np.int64)
    tc = _thread_coords(layout)[:, None, :]
    spt, tpd, shape = np.array(layout.spt), np.array(layout.tpd), np.array(layout.shape)
    chunk = spt * tpd
    held = np.ones(coords.shape[:2], dtype=bool)
    slot = np.zeros(coords.shape[:2], dtype=np.int64)
    for d, sd in enumerate(layout.slot_dims):
        c = coords[..., d]
        if chunk[d] > shape[d]:             # wrapped: one chunk, offset tc*spt mod size
            start = (tc[..., d] * spt[d]) % shape[d]
            ok = (c // spt[d]) * spt[d] == start
            s = c % spt[d]
        else:
            ok = (c % chunk[d]) // spt[d] == tc[..., d]
            s = (c // chunk[d]) * spt[d] + c % spt[d]
        held &= ok
        slot = slot * sd + s
    return np.where(held, slot, -1)


@lru_cache(maxsize=4096)
def slot_map(value_layout, value_shape, want):
    """For a value stored in `value_layout` (of `value_shape`, which broadcasts
    to want.shape), the value slot each slot of `want` reads, if every
    work-item already holds what it needs; otherwise None (data must move)."""
    if value_layout.num_threads != want.num_threads:
        return None
    coords = element_coords(want)
    bcast = [i for i, s in enumerate(value_shape) if s == 1 and want.shape[i] != 1]
    if bcast:
        coords = coords.copy()
        coords[..., bcast] = 0
    slots = find_slots(value_layout, coords)
    if (slots < 0).any() or not (slots == slots[:1]).all():
        return None
    return tuple(int(s) for s in slots[0])
