"""The forward pass's memory plan: symbolic shapes, lifetimes, one arena.

Shapes are sympy expressions of two symbols, S (tokens in this step) and
P (tokens already in the KV cache), plus R (rows of logits wanted: 1 or S).
From the list of steps and the buffers each reads and writes, the plan
derives every buffer's lifetime once, and places buffers whose lifetimes do
not overlap at the same place in one arena sized for the largest step
(Transformer-Lite's symbolic-shape planning). Per step only the shapes are
evaluated (`views`), and the views for a given (S, R) are made once.

    >>> plan = Plan({"x": (S, 64), "h": (S, 64)}, [Use("norm", ["x"], ["h"])], max_tokens=16)
    >>> plan.views(S=4, R=1)["h"].shape
    (4, 64)
"""
import dataclasses
import math

import numpy as np
import sympy

import kdsl

S, P, R = sympy.symbols("S P R", integer=True, nonnegative=True)


@dataclasses.dataclass(frozen=True)
class Use:
    """One step of the forward: which buffers it reads and which it writes."""
    name: str
    reads: list
    writes: list


class Plan:
    """Buffers with symbolic shapes placed in one float32 arena by lifetime.

    buffers: name -> shape (a tuple of ints and sympy expressions of S, R).
    uses: the steps of one forward, in order (a per-layer template repeated
    per layer reads and writes the same names, so one template suffices).
    pinned: buffers that live through the whole forward (the residual stream).
    """

    def __init__(self, buffers, uses, *, max_tokens, pinned=(), device=None):
        self.shapes = {name: tuple(sympy.sympify(d) for d in shape)
                       for name, shape in buffers.items()}
        unknown = {n for use in uses for n in use.reads + use.writes} - set(self.shapes)
        if unknown:
            raise ValueError(f"plan: steps use undeclared buffers {sorted(unknown)}")
        self.max_tokens = max_tokens
        self.lifetimes = _lifetimes(uses, self.shapes, pinned)
        largest = {S: max_tokens, R: max_tokens}
        self.sizes = {name: int(math.prod(d.subs(largest) for d in shape)) if shape else 1
                      for name, shape in self.shapes.items()}
        self.offsets = _place(self.sizes, self.lifetimes)
        self.arena_size = max((self.offsets[n] + self.sizes[n] for n in self.sizes), default=0)
        self.arena = kdsl.empty((self.arena_size,), np.float32, device=device)
        # shapes compiled to plain functions of (S, R) so evaluating them costs no sympy
        self._shape_fns = {name: sympy.lambdify((S, R), list(shape), "math")
                           for name, shape in self.shapes.items()}
        self._views = {}

    @property
    def nbytes(self):
        return self.arena_size * 4

    @property
    def unshared_nbytes(self):
        """What the buffers would take without reuse, for comparison."""
        return sum(self.sizes.values()) * 4

    def views(self, *, S, R):
        """Each buffer as a contiguous view of the arena, shaped for this step."""
        if not 1 <= S <= self.max_tokens:
            raise ValueError(f"plan: a step of {S} tokens; the plan holds 1..{self.max_tokens}")
        key = (S, R)
        if key not in self._views:
            views = {}
            for name, fn in self._shape_fns.items():
                shape = tuple(int(d) for d in fn(S, R))
                start = self.offsets[name]
                views[name] = self.arena[start:start + math.prod(shape)].reshape(shape)
            self._views[key] = views
        return self._views[key]


def _lifetimes(uses, shapes, pinned):
    """name -> (first step, last step) in which the buffer is used."""
    first, last = {}, {}
    for i, use in enumerate(uses):
        for name in use.reads + use.writes:
            first.setdefault(name, i)
            last[name] = i
    end = len(uses)
    spans = {name: (first.get(name, 0), last.get(name, 0)) for name in shapes}
    for name in pinned:
        spans[name] = (0, end)
    return spans


def _place(sizes, lifetimes):
    """Offsets (in elements) such that buffers alive at the same time never overlap.

    Largest first, each at the lowest offset clear of the live ones placed
    before it: the greedy-by-size heuristic of TFLite's arena planner.
    """
    offsets = {}
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        start, end = lifetimes[name]
        busy = sorted((offsets[o], offsets[o] + sizes[o]) for o in offsets
                      if lifetimes[o][0] <= end and start <= lifetimes[o][1])
        at = 0
        for lo, hi in busy:
            if at + sizes[name] <= lo:
                break
            at = max(at, hi)
        offsets[name] = at
    return offsets
