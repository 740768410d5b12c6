"""The kernel AST: what the parser produces and every later pass reads.

Every node carries `line` and `col` (1-based, in the file the kernel lives in)
so that any pass can raise a CompileError that points at the source.
"""
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Node:
    line: int
    col: int


# ----------------------------------------------------------------- expressions
@dataclass
class Name(Node):
    id: str


@dataclass
class Constant(Node):
    value: Any            # int, float, bool, str or None


@dataclass
class Attribute(Node):
    value: Node
    attr: str


@dataclass
class Keyword(Node):
    name: str
    value: Node


@dataclass
class Call(Node):
    func: Node
    args: list
    keywords: list        # list[Keyword]


@dataclass
class Slice(Node):
    """A `:` inside a subscript (only the full slice `:` is meaningful)."""
    lower: Optional[Node]
    upper: Optional[Node]
    step: Optional[Node]


@dataclass
class Subscript(Node):
    value: Node
    indices: list         # Slice, Constant(None) or expressions


@dataclass
class BinOp(Node):
    op: str               # + - * / // % @ ** & | ^ << >>
    left: Node
    right: Node


@dataclass
class UnaryOp(Node):
    op: str               # - + ~ not
    operand: Node


@dataclass
class Compare(Node):
    op: str               # < > <= >= == !=
    left: Node
    right: Node


@dataclass
class BoolOp(Node):
    op: str               # and, or
    values: list


@dataclass
class IfExp(Node):
    cond: Node
    body: Node
    orelse: Node


@dataclass
class Tuple(Node):
    elts: list


# ------------------------------------------------------------------ statements
@dataclass
class Assign(Node):
    targets: list         # list[Name]; several for `a, b = ...`
    value: Node
    unpack: bool = False  # True for tuple assignment


@dataclass
class AugAssign(Node):
    target: Name
    op: str               # the binary operator, e.g. '+'
    value: Node


@dataclass
class ExprStmt(Node):
    value: Node


@dataclass
class Return(Node):
    value: Optional[Node]


@dataclass
class If(Node):
    cond: Node
    body: list
    orelse: list


@dataclass
class For(Node):
    var: str
    iter: Node            # a Call: range(...), kl.range(...), kl.static_range(...)
    body: list


@dataclass
class While(Node):
    cond: Node
    body: list


@dataclass
class Break(Node):
    pass


@dataclass
class Continue(Node):
    pass


@dataclass
class Pass(Node):
    pass


@dataclass
class Param(Node):
    name: str
    annotation: Optional[Node]
    default: Optional[Node]


@dataclass
class Function(Node):
    name: str
    params: list          # list[Param]
    body: list
    docstring: Optional[str] = None
    filename: str = "<kernel>"
    source_lines: list = field(default_factory=list)   # the whole file's lines

    def source_line(self, line):
        if 1 <= line <= len(self.source_lines):
            return self.source_lines[line - 1]
        return None
