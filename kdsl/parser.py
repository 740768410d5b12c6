"""Kernel source -> AST (kdsl.ast_nodes), with file:line:col on every node.

The source of a `@kdsl.jit` function comes from `inspect.getsourcelines`; it
is dedented (kernels defined inside functions are common in tests) and its
decorators are cut off, and every position is mapped back to the file.
"""
import inspect
import linecache
import os
import re

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.indenter import DedentError, PythonIndenter

from . import ast_nodes as A
from .errors import CompileError

_GRAMMAR = os.path.join(os.path.dirname(__file__), "grammar.lark")
_parser = None

# Python constructs the kernel language leaves out, and what to write instead.
_UNSUPPORTED = {
    "class": "classes are not supported in a kernel",
    "lambda": "lambdas are not supported in a kernel; write a @kdsl.jit helper function",
    "try": "'try' is not supported in a kernel",
    "except": "'try/except' is not supported in a kernel",
    "with": "'with' is not supported in a kernel",
    "import": "'import' is not supported inside a kernel; import at module level",
    "from": "'import' is not supported inside a kernel; import at module level",
    "global": "'global' is not supported in a kernel; module-level constants are read directly",
    "nonlocal": "'nonlocal' is not supported in a kernel",
    "yield": "generators are not supported in a kernel",
    "async": "'async' is not supported in a kernel",
    "await": "'await' is not supported in a kernel",
    "del": "'del' is not supported in a kernel",
    "raise": "'raise' is not supported in a kernel",
    "assert": "'assert' is not supported in a kernel",
    "def": "nested functions are not supported; define a separate @kdsl.jit function",
    "is": "'is' is not supported in a kernel; compare with == or !=",
    "in": "'in' is only allowed in 'for ... in range(...)'",
}


def _get_parser():
    global _parser
    if _parser is None:
        with open(_GRAMMAR) as f:
            _parser = Lark(f.read(), parser="lalr", postlex=PythonIndenter(),
                           propagate_positions=True, maybe_placeholders=True)
    return _parser


class _Source:
    """Maps positions in the dedented snippet back to the file."""

    def __init__(self, filename, file_lines, first_line, indent):
        self.filename = filename
        self.file_lines = file_lines
        self.first_line = first_line      # file line of the snippet's first line
        self.indent = indent

    def pos(self, line, col):
        return line + self.first_line - 1, col + self.indent

    def error(self, message, line, col):
        """An error at a position in the snippet."""
        return self.error_at(message, *self.pos(line, col))

    def error_at(self, message, fline, fcol):
        """An error at a position already mapped to the file."""
        src = self.file_lines[fline - 1] if 0 < fline <= len(self.file_lines) else None
        return CompileError(message, self.filename, fline, fcol, src)


def _pos(src, item):
    if isinstance(item, Token):
        return src.pos(item.line, item.column)
    return src.pos(item.meta.line, item.meta.column)


class _ToAST(Transformer):
    """One method per grammar rule: lark tree -> kdsl.ast_nodes."""

    def __init__(self, src):
        super().__init__()
        self.src = src

    def _at(self, item):
        return _pos(self.src, item)

    # ---- atoms
    @v_args(meta=True)
    def name(self, meta, children):
        tok = children[0]
        if tok in _UNSUPPORTED:
            raise self.src.error(_UNSUPPORTED[tok], tok.line, tok.column)
        return A.Name(*self._at(tok), str(tok))

    def number(self, children):
        tok = children[0]
        text = tok.replace("_", "")
        if tok.type == "FLOAT_NUMBER":
            value = float(text)
        else:
            value = int(text, 0)
        return A.Constant(*self._at(tok), value)

    def string(self, children):
        # `string+` yields a list of `string` results (already Constants) or tokens
        parts = []
        first = children[0]
        for c in children:
            if isinstance(c, A.Constant):
                parts.append(c.value)
            else:
                parts.append(_string_value(c))
        if isinstance(first, A.Constant):
            return A.Constant(first.line, first.col, "".join(parts))
        return A.Constant(*self._at(first), "".join(parts))

    @v_args(meta=True)
    def none(self, meta, _):
        return A.Constant(*self.src.pos(meta.line, meta.column), None)

    @v_args(meta=True)
    def true(self, meta, _):
        return A.Constant(*self.src.pos(meta.line, meta.column), True)

    @v_args(meta=True)
    def false(self, meta, _):
        return A.Constant(*self.src.pos(meta.line, meta.column), False)

    @v_args(meta=True)
    def empty_tuple(self, meta, _):
        return A.Tuple(*self.src.pos(meta.line, meta.column), [])

    @v_args(meta=True)
    def list_expr(self, meta, children):
        return A.Tuple(*self.src.pos(meta.line, meta.column), [c for c in children if c is not None])

    @v_args(meta=True)
    def tuple_expr(self, meta, children):
        elts = [c for c in children if c is not None]
        return A.Tuple(elts[0].line, elts[0].col, elts)

    # ---- trailers
    @v_args(meta=True)
    def call(self, meta, children):
        func, args = children
        pos, kw = [], []
        for a in (args or []):
            if isinstance(a, A.Keyword):
                kw.append(a)
            elif kw:
                raise self.src.error_at("positional argument after keyword argument", a.line, a.col)
            else:
                pos.append(a)
        return A.Call(func.line, func.col, func, pos, kw)

    def arguments(self, children):
        return [c for c in children if c is not None]

    def kwarg(self, children):
        name, value = children
        return A.Keyword(*self._at(name), str(name), value)

    def subscript(self, children):
        value, indices = children
        return A.Subscript(value.line, value.col, value, indices)

    def subscripts(self, children):
        return [c for c in children if c is not None]

    @v_args(meta=True)
    def slice(self, meta, children):
        lower, upper, step = (children + [None, None, None])[:3]
        return A.Slice(*self.src.pos(meta.line, meta.column), lower, upper, step)

    def attribute(self, children):
        value, name = children
        return A.Attribute(value.line, value.col, value, str(name))

    # ---- operators
    def _fold(self, children):
        node = children[0]
        for i in range(1, len(children), 2):
            op, right = children[i], children[i + 1]
            node = A.BinOp(node.line, node.col, str(op), node, right)
        return node

    shift_expr = arith_expr = term = _fold

    def _fold_fixed(op):
        def fold(self, children):
            node = children[0]
            for right in children[1:]:
                node = A.BinOp(node.line, node.col, op, node, right)
            return node
        return fold

    expr = _fold_fixed("|")
    xor_expr = _fold_fixed("^")
    and_expr = _fold_fixed("&")

    def power(self, children):
        base, _op, exp = children
        return A.BinOp(base.line, base.col, "**", base, exp)

    def unary(self, children):
        op, operand = children
        return A.UnaryOp(*self._at(op), str(op), operand)

    @v_args(meta=True)
    def not_op(self, meta, children):
        return A.UnaryOp(*self.src.pos(meta.line, meta.column), "not", children[0])

    def and_test(self, children):
        return A.BoolOp(children[0].line, children[0].col, "and", children)

    def or_test(self, children):
        return A.BoolOp(children[0].line, children[0].col, "or", children)

    def comparison(self, children):
        if len(children) > 3:
            first = children[0]
            raise self.src.error_at("chained comparisons are not supported; combine "
                                    "two comparisons with '&'", first.line, first.col)
        left, op, right = children
        return A.Compare(left.line, left.col, str(op), left, right)

    def ifexp(self, children):
        body, cond, orelse = children
        return A.IfExp(body.line, body.col, cond, body, orelse)

    # ---- statements
    def suite(self, children):
        out = []
        for c in children:
            out.extend(c if isinstance(c, list) else [c])
        return out

    def simple_stmt(self, children):
        return [c for c in children if c is not None]

    def _target(self, t):
        if isinstance(t, A.Name):
            return t
        if isinstance(t, A.Subscript):
            why = "assignment to a subscript is not supported; use kl.store to write memory"
        elif isinstance(t, A.Attribute):
            why = "assignment to an attribute is not supported"
        else:
            why = "can only assign to a name"
        raise self.src.error_at(why, t.line, t.col)

    def assign_stmt(self, children):
        target, value = children
        unpack = isinstance(target, A.Tuple)
        names = [self._target(t) for t in (target.elts if unpack else [target])]
        return A.Assign(target.line, target.col, names, value, unpack=unpack)

    def annassign_stmt(self, children):
        target, _annotation, value = children
        target = self._target(target)
        return A.Assign(target.line, target.col, [target], value)

    def augassign_stmt(self, children):
        target, op, value = children
        target = self._target(target)
        return A.AugAssign(target.line, target.col, target, str(op)[:-1], value)

    def expr_stmt(self, children):
        value = children[0]
        return A.ExprStmt(value.line, value.col, value)

    @v_args(meta=True)
    def pass_stmt(self, meta, _):
        return A.Pass(*self.src.pos(meta.line, meta.column))

    @v_args(meta=True)
    def break_stmt(self, meta, _):
        return A.Break(*self.src.pos(meta.line, meta.column))

    @v_args(meta=True)
    def continue_stmt(self, meta, _):
        return A.Continue(*self.src.pos(meta.line, meta.column))

    @v_args(meta=True)
    def return_stmt(self, meta, children):
        return A.Return(*self.src.pos(meta.line, meta.column), children[0])

    @v_args(meta=True)
    def if_stmt(self, meta, children):
        cond, body, *rest = children
        orelse = rest[-1] if rest and rest[-1] is not None and not isinstance(rest[-1], tuple) else []
        elifs = [r for r in rest if isinstance(r, tuple)]
        # desugar elif chains into nested Ifs, innermost first
        for (eline, ecol, econd, ebody) in reversed(elifs):
            orelse = [A.If(eline, ecol, econd, ebody, orelse)]
        return A.If(*self.src.pos(meta.line, meta.column), cond, body, orelse or [])

    @v_args(meta=True)
    def elif_clause(self, meta, children):
        return (*self.src.pos(meta.line, meta.column), children[0], children[1])

    def else_clause(self, children):
        return children[0]

    @v_args(meta=True)
    def for_stmt(self, meta, children):
        var, it, body = children
        return A.For(*self.src.pos(meta.line, meta.column), str(var), it, body)

    @v_args(meta=True)
    def while_stmt(self, meta, children):
        cond, body = children
        return A.While(*self.src.pos(meta.line, meta.column), cond, body)

    def param(self, children):
        name, annotation, default = children
        return A.Param(*self._at(name), str(name), annotation, default)

    def parameters(self, children):
        return [c for c in children if c is not None]

    @v_args(meta=True)
    def funcdef(self, meta, children):
        name, params, _ret, body = children
        doc = None
        if body and isinstance(body[0], A.ExprStmt) and isinstance(body[0].value, A.Constant) \
                and isinstance(body[0].value.value, str):
            doc = body[0].value.value
            body = body[1:]
        return A.Function(*self.src.pos(meta.line, meta.column), str(name), params or [], body, doc)


def _string_value(tok):
    text = str(tok)
    i = 0
    while text[i] not in "'\"":
        i += 1
    prefix, body = text[:i].lower(), text[i:]
    q = 3 if body[:3] in ('"""', "'''") else 1
    inner = body[q:-q]
    if "r" in prefix:
        return inner
    return inner.encode("latin-1", "backslashreplace").decode("unicode_escape")


def _unsupported_keyword(text, first=False):
    """(column, message) of the first construct the language leaves out on a line."""
    code = re.sub(r"#.*", "", text)
    code = re.sub(r"('[^']*'|\"[^\"]*\")", lambda m: " " * len(m.group()), code)
    stripped = code.lstrip()
    m = re.match(r"for\b", stripped)
    for m in re.finditer(r"\b(%s|for)\b" % "|".join(_UNSUPPORTED), code):
        word = m.group(1)
        if word == "for" and m.start() == len(code) - len(stripped):
            continue                       # a for statement, fine
        if word == "in" and stripped.startswith("for"):
            continue
        if word == "def" and first:
            continue                       # the kernel's own def line
        if word == "for":
            opening = max(code.rfind("[", 0, m.start()), code.rfind("(", 0, m.start()))
            return (opening if opening >= 0 else m.start()) + 1, \
                "comprehensions are not supported in a kernel; write a loop"
        return m.start() + 1, _UNSUPPORTED[word]
    return None


def _bad_dedent_line(lines):
    """First line whose indentation matches no enclosing level."""
    levels = [0]
    for i, text in enumerate(lines, 1):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        width = len(text) - len(text.lstrip())
        if width > levels[-1]:
            levels.append(width)
        while width < levels[-1]:
            levels.pop()
        if width != levels[-1]:
            return i
    return len(lines)


def _unclosed_bracket(lines, upto):
    """(line, col) of a bracket still open at the end of line `upto`, if any."""
    stack = []
    for i, text in enumerate(lines[:upto], 1):
        code = re.sub(r"#.*", "", re.sub(r"('[^']*'|\"[^\"]*\")", lambda m: "_" * len(m.group()), text))
        for j, ch in enumerate(code):
            if ch in "([{":
                stack.append((i, j + 1))
            elif ch in ")]}" and stack:
                stack.pop()
    return stack[0] if stack else None


def _syntax_error(src, exc, lines):
    line, col = exc.line, exc.column
    opened = _unclosed_bracket(lines, len(lines) if line < 1 else line - 1)
    if opened is None and isinstance(exc, UnexpectedToken) and \
            exc.token.type in ("$END", "_NEWLINE", "_DEDENT"):
        opened = _unclosed_bracket(lines, len(lines) if exc.token.type == "$END" else line)
    if opened is not None:
        return src.error("'(' was never closed", *opened) if lines[opened[0] - 1][opened[1] - 1] == "(" \
            else src.error(f"'{lines[opened[0] - 1][opened[1] - 1]}' was never closed", *opened)
    if isinstance(exc, UnexpectedToken) and exc.token.type == "$END":
        line, col = max(len(lines), 1), 1
        return src.error("unexpected end of kernel source (unclosed bracket?)", line, col)
    if 0 < line <= len(lines):
        found = _unsupported_keyword(lines[line - 1], first=line == 1)
        if found:
            return src.error(found[1], line, found[0])
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        if tok.type == "_INDENT":
            nxt = next((i for i in range(line, len(lines)) if lines[i].strip()), line - 1)
            text = lines[nxt] if nxt < len(lines) else ""
            return src.error("unexpected indentation", nxt + 1, len(text) - len(text.lstrip()) + 1)
        if tok.type in ("_NEWLINE", "_DEDENT"):
            text = lines[line - 1] if 0 < line <= len(lines) else ""
            end = len(re.sub(r"#.*", "", text).rstrip()) + 1
            return src.error("invalid syntax: unexpected end of line (missing ':'?)", line, end)
        shown = str(tok).strip() or tok.type
        return src.error(f"invalid syntax: unexpected '{shown}'", line, col)
    if isinstance(exc, UnexpectedCharacters):
        return src.error(f"invalid syntax: unexpected character {exc.char!r}", line, col)
    return src.error(f"invalid syntax: {exc}", max(line, 1), max(col, 1))


def parse_source(text, filename="<kernel>", first_line=1, file_lines=None):
    """Parse the text of one `def` (decorators already removed) into an A.Function.

    >>> f = parse_source("def k(x_ptr, N):\\n    pass\\n")
    >>> f.name, [p.name for p in f.params]
    ('k', ['x_ptr', 'N'])
    """
    lines = text.splitlines(keepends=True)
    indent = len(lines[0]) - len(lines[0].lstrip()) if lines else 0
    dedented = "".join(l[indent:] if l[:indent].strip() == "" else l.lstrip() for l in lines)
    if not dedented.endswith("\n"):
        dedented += "\n"
    if file_lines is None:
        file_lines = [""] * (first_line - 1) + text.splitlines(keepends=True)
    src = _Source(filename, file_lines, first_line, indent)
    try:
        tree = _get_parser().parse(dedented)
    except UnexpectedInput as exc:
        raise _syntax_error(src, exc, dedented.splitlines()) from None
    except DedentError as exc:
        lines = dedented.splitlines()
        line = _bad_dedent_line(lines)
        text = lines[line - 1] if 0 < line <= len(lines) else ""
        raise src.error("unindent does not match any outer indentation level",
                        line, len(text) - len(text.lstrip()) + 1) from None
    try:
        fn = _ToAST(src).transform(tree)
    except VisitError as exc:
        raise exc.orig_exc from None
    fn.filename = filename
    fn.source_lines = src.file_lines
    return fn


def _strip_decorators(lines):
    """Index of the `def` line among a function's source lines."""
    for i, l in enumerate(lines):
        if l.lstrip().startswith("def ") or l.lstrip().startswith("async def "):
            return i
    raise CompileError("could not find the 'def' line of the kernel")


def read_function_source(fn):
    """(source lines, first line number, file name, the file's lines) of a function,
    read now: a kernel is parsed from the text Python compiled, even if its file
    changes before its first launch. Raises CompileError for a function with no
    source (typed at a prompt)."""
    try:
        lines, start = inspect.getsourcelines(fn)
    except (OSError, TypeError) as exc:
        raise CompileError(f"cannot read the source of {getattr(fn, '__name__', fn)!r}: {exc}. "
                           "Kernels must be defined in a file, not typed at a prompt.") from None
    filename = inspect.getsourcefile(fn) or "<kernel>"
    file_lines = list(linecache.getlines(filename)) or lines
    return lines, max(start, 1), filename, file_lines


def parse_function(fn, source=None):
    """Parse a Python function object's source (or `source`, from
    read_function_source) into an A.Function."""
    lines, start, filename, file_lines = source or read_function_source(fn)
    d = _strip_decorators(lines)
    return parse_source("".join(lines[d:]), filename, start + d, file_lines)
