"""Prove masks always true with sympy, so they vanish from the generated code.

A mask such as `offs_k < K` inside `for k in range(0, K, BLOCK_K)` holds for
every element whenever K is a multiple of BLOCK_K; the launch specialises K
as a multiple of 16 (as Triton does), so with BLOCK_K dividing 16 the
comparison is dead weight in the hottest loop. This pass computes, for each
integer value, symbolic bounds [lo, hi] as sympy expressions of the kernel's
integer arguments and launch sizes, and drops the mask of a load or store
when every comparison in it is proven true for all values of those symbols.

It runs between the checker and the back end; the interpreter keeps every
mask, so it stays an independent oracle for what this pass removes.
"""
import sympy

from . import ir

_MASKED_CMPS = {"<", "<=", ">", ">="}


def remove_proven_masks(kernel):
    """Drop the masks of loads and stores that are always true; returns how many were dropped."""
    bounds = _Bounds(kernel)
    dropped = 0
    for stmt in ir.walk_stmts(kernel.body):
        if isinstance(stmt, ir.Store) and stmt.mask is not None and bounds.always_true(stmt.mask):
            stmt.mask = None
            dropped += 1
    for value in ir.walk_values(kernel.body):
        if value.op == "load" and value.args[1] is not None and bounds.always_true(value.args[1]):
            value.args = [value.args[0], None, None]
            dropped += 1
    return dropped


class _Bounds:
    """Symbolic [lo, hi] of integer values; None where nothing is known."""

    def __init__(self, kernel):
        self.memo = {}
        self.symbols = {}
        self.loops = _loop_counters(kernel.body)

    def always_true(self, mask):
        if mask.op in ("splat", "broadcast", "expand"):
            return self.always_true(mask.args[0])
        if mask.op == "binop" and mask.attrs.get("op") in ("&", "and"):
            return all(self.always_true(a) for a in mask.args)
        if mask.op == "const":
            return bool(mask.attrs["value"])
        if mask.op != "cmp" or mask.attrs["op"] not in _MASKED_CMPS:
            return False
        a, b = (self.of(x) for x in mask.args)
        if a is None or b is None:
            return False
        op = mask.attrs["op"]
        if op in (">", ">="):
            a, b = b, a
            op = "<" if op == ">" else "<="
        gap = sympy.simplify(a[1] - b[0])          # the largest a minus the smallest b
        return bool(gap.is_negative) if op == "<" else bool(gap.is_nonpositive)

    def of(self, v):
        key = id(v)
        if key not in self.memo:
            self.memo[key] = None          # cycles (a var read in its own update) stay unknown
            self.memo[key] = self._compute(v)
        return self.memo[key]

    def _symbol(self, name, **assumptions):
        if name not in self.symbols:
            self.symbols[name] = sympy.Symbol(name, integer=True, **assumptions)
        return self.symbols[name]

    def _compute(self, v):
        if v.is_ptr or not (v.dtype.is_int and not v.dtype.is_bool):
            return None
        op = v.op
        if op == "const":
            return (sympy.Integer(v.attrs["value"]),) * 2
        if op == "arg":
            name = v.attrs["param"]
            if v.attrs.get("multiple_of") == 16:
                s = 16 * self._symbol(f"{name}_div16")
            else:
                s = self._symbol(name)
            return s, s
        if op == "num_programs":
            n = self._symbol(f"num_programs_{v.attrs['axis']}", positive=True)
            return n, n
        if op == "program_id":
            n = self._symbol(f"num_programs_{v.attrs['axis']}", positive=True)
            return sympy.Integer(0), n - 1
        if op == "arange":
            return sympy.Integer(v.attrs["start"]), sympy.Integer(v.attrs["end"] - 1)
        if op in ("splat", "broadcast", "expand", "reshape", "trans"):
            return self.of(v.args[0])
        if op == "readvar":
            loop = self.loops.get(id(v))
            return self._loop_counter(loop) if loop is not None else None
        if op == "binop":
            return self._binop(v.attrs["op"], *(self.of(a) for a in v.args))
        return None

    def _binop(self, op, a, b):
        if a is None or b is None:
            return None
        if op == "+":
            return a[0] + b[0], a[1] + b[1]
        if op == "-":
            return a[0] - b[1], a[1] - b[0]
        if op == "*":
            for x, y in ((a, b), (b, a)):
                if x[0] == x[1] and x[0].is_number:          # scaling by a constant
                    c = x[0]
                    return (c * y[0], c * y[1]) if c >= 0 else (c * y[1], c * y[0])
        return None

    def _loop_counter(self, loop):
        """A `for` counter spans start .. start + step*(trips - 1) while the body runs."""
        start, stop, step = (self.of(x) for x in (loop.start, loop.stop, loop.step))
        if start is None or stop is None or step is None:
            return None
        if start[0] != start[1] or stop[0] != stop[1] or not (step[0] == step[1] and
                                                             step[0].is_number and step[0] > 0):
            return None
        start, stop, step = start[0], stop[0], step[0]
        trips = sympy.ceiling((stop - start) / step)
        return start, start + step * (trips - 1)


def _loop_counters(stmts):
    """{id(readvar Value): For} for reads of a counter inside its own loop's body.

    Only counters that nothing but their own loop assigns qualify, and only
    reads inside the body: after the loop the OpenCL counter has moved past
    the last value.
    """
    loops, assigned = {}, set()
    for stmt in ir.walk_stmts(stmts):
        if isinstance(stmt, ir.For):
            if id(stmt.var) in loops:
                assigned.add(id(stmt.var))         # two loops share the counter
            loops[id(stmt.var)] = stmt
        elif isinstance(stmt, ir.SetVar):
            assigned.add(id(stmt.var))
    reads = {}
    for key, loop in loops.items():
        if key in assigned:
            continue
        for stmt in ir.walk_stmts(loop.body):
            value = getattr(stmt, "value", None)
            if isinstance(stmt, ir.Eval) and value.op == "readvar" and value.attrs["var"] is loop.var:
                reads[id(value)] = loop
    return reads
