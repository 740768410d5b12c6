"""The typed intermediate representation the checker produces.

Values are SSA: each is computed once from its operands. Python variables that
are assigned at more than one place (loop counters, accumulators) are `Var`s:
mutable, with one fixed type, read with a 'readvar' value and written with a
SetVar statement. Control flow stays structured (If, For, While) so the
OpenCL it becomes reads like the kernel.
"""
from dataclasses import dataclass, field
from typing import Any, Optional

from . import language as kl


@dataclass(eq=False)
class Value:
    op: str                       # see OPS below
    args: list                    # operand Values
    dtype: kl.dtype               # element type (the pointee type for pointers)
    shape: tuple = ()             # () for scalars
    is_ptr: bool = False
    attrs: dict = field(default_factory=dict)
    node: Any = None              # the AST node it came from (for positions)
    name: Optional[str] = None    # Python variable name, for readable OpenCL

    @property
    def is_block(self):
        return bool(self.shape)

    @property
    def numel(self):
        n = 1
        for s in self.shape:
            n *= s
        return n

    def __repr__(self):
        t = f"ptr<{self.dtype.name}>" if self.is_ptr else self.dtype.name
        return f"%{self.op}{list(self.shape) if self.shape else ''}:{t}"


# op -> meaning (operands; attrs)
OPS = {
    "const": "a scalar constant (attrs: value)",
    "arg": "a kernel parameter (attrs: param)",
    "program_id": "(attrs: axis)",
    "num_programs": "(attrs: axis)",
    "arange": "int32 block start..end (attrs: start, end)",
    "splat": "a scalar broadcast to a block (args: scalar)",
    "broadcast": "a block broadcast to a larger shape (args: block)",
    "expand": "a size-1 axis inserted (args: block; attrs: axis)",
    "binop": "elementwise arithmetic (args: a, b; attrs: op)",
    "unop": "elementwise - ~ not (args: a; attrs: op)",
    "cmp": "elementwise comparison, int1 result (args: a, b; attrs: op)",
    "where": "(args: cond, a, b)",
    "cast": "(args: x; attrs: bitcast)",
    "math": "elementwise function (args; attrs: fn)",
    "load": "(args: ptr, mask or None, other or None)",
    "reduce": "(args: x; attrs: op in sum max min argmax argmin, axis)",
    "dot": "(args: a, b, acc or None)",
    "trans": "(args: x; attrs: perm)",
    "reshape": "(args: x)",
    "readvar": "the current value of a Var (attrs: var)",
    "asm": "inline assembly per element (args: operands; attrs: text, constraints, pure, "
           "unsupported: the CompileError for devices without it)",
}

# ops computed from their operands alone, with no memory access or exchange
# between work-items: the back end may compute them in any layout.
ELEMENTWISE = {"const", "arg", "program_id", "num_programs", "arange", "splat", "broadcast",
               "expand", "binop", "unop", "cmp", "where", "cast", "math", "asm"}


@dataclass(eq=False)
class Var:
    """A mutable Python variable (assigned at several places)."""
    name: str
    dtype: kl.dtype
    shape: tuple
    is_ptr: bool
    node: Any = None

    def __repr__(self):
        return f"var {self.name}"


# ------------------------------------------------------------------ statements
@dataclass(eq=False)
class Store:
    ptr: Value
    value: Value
    mask: Optional[Value]
    node: Any = None


@dataclass(eq=False)
class SetVar:
    var: Var
    value: Value
    node: Any = None


@dataclass(eq=False)
class Eval:
    """Compute a value here (so its cost is paid where the source put it)."""
    value: Value


@dataclass(eq=False)
class If:
    cond: Value
    then: list
    orelse: list
    node: Any = None


@dataclass(eq=False)
class For:
    var: Var                      # the loop counter (an int32 scalar Var)
    start: Value
    stop: Value
    step: Value
    body: list
    node: Any = None


@dataclass(eq=False)
class While:
    cond_body: list               # statements computing the condition
    cond: Value
    body: list
    node: Any = None


@dataclass(eq=False)
class Break:
    node: Any = None


@dataclass(eq=False)
class Continue:
    node: Any = None


@dataclass(eq=False)
class Return:
    node: Any = None


@dataclass
class Kernel:
    """A checked kernel: parameters, their Values, and a statement list."""
    name: str
    params: list                  # [(name, Value)] for runtime parameters, in order
    body: list
    vars: list                    # every Var, declared at the top of the kernel
    num_threads: int
    filename: str = "<kernel>"


def walk_values(stmts):
    """Every Value reachable from a statement list (each once)."""
    seen = set()
    stack = []
    for s in _walk(stmts):
        for attr in ("ptr", "value", "mask", "cond", "start", "stop", "step"):
            v = getattr(s, attr, None)
            if isinstance(v, Value):
                stack.append(v)
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        yield v
        stack.extend(a for a in v.args if isinstance(a, Value))


def walk_stmts(stmts):
    """Every statement, nested ones included."""
    return _walk(stmts)


def _walk(stmts):
    for s in stmts:
        yield s
        for attr in ("then", "orelse", "body", "cond_body"):
            yield from _walk(getattr(s, attr, None) or [])
