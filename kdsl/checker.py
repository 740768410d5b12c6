"""Check a kernel and lower it to typed IR (kdsl.ir).

Binds constexpr values and argument types, evaluates everything that is known
at compile time in Python (constexpr arithmetic, `if` on constexprs,
`kl.static_range` unrolling, helper-kernel inlining), infers the dtype and
static shape of every other value, and rejects what cannot compile with a
CompileError that points at the source.
"""
import builtins
import math
import re
import types as pytypes

import numpy as np

from . import ast_nodes as A
from . import ir
from . import language as kl
from .errors import CompileError
from .types import (arith_dtype, broadcast_shapes, python_dtype, reduce_dtype,
                    weak_dtype)

_PY_NUMBER = (bool, int, float, np.integer, np.floating, np.bool_)
_MATH_FNS = {"exp", "exp2", "log", "log2", "sqrt", "rsqrt", "abs", "sin", "cos", "sigmoid"}
_REDUCTIONS = {"sum", "max", "min", "argmax", "argmin"}
_PY_BUILTINS = {"min": builtins.min, "max": builtins.max, "abs": builtins.abs,
                "int": int, "float": float, "bool": bool, "len": len, "range": builtins.range,
                "print": None, "True": True, "False": False, "None": None}


def _is_pow2(n):
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0


def _py(v):
    """numpy scalars -> Python scalars, so constexpr arithmetic stays exact."""
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    return v


def _assigned_names(stmts, counts, known=None, in_loop=None):
    """Count assignment sites per name (static_range loop variables excluded).

    `known` maps names to compile-time values, so that the branch an
    `if EVEN:` on a constexpr does not take does not count. `in_loop`, a set
    when given, collects the names assigned inside a runtime loop's body."""
    known = known or {}
    for s in stmts:
        if isinstance(s, A.Assign):
            for t in s.targets:
                counts[t.id] = counts.get(t.id, 0) + 1
        elif isinstance(s, A.AugAssign):
            counts[s.target.id] = counts.get(s.target.id, 0) + 2
        elif isinstance(s, (A.For, A.While)):
            runtime_loop = not (isinstance(s, A.For) and _is_static_range(s.iter))
            if isinstance(s, A.For) and runtime_loop:
                counts[s.var] = counts.get(s.var, 0) + 2
            body = _assigned_names(s.body, {}, known, in_loop)
            if runtime_loop and in_loop is not None:
                in_loop.update(body)
            for name, c in body.items():
                counts[name] = counts.get(name, 0) + c
        elif isinstance(s, A.If):
            taken = _static_truth(s.cond, known)
            if taken is not False:
                _assigned_names(s.body, counts, known, in_loop)
            if taken is not True:
                _assigned_names(s.orelse, counts, known, in_loop)
    return counts


def _static_truth(node, known):
    """The truth of a condition made of compile-time names and literals, else None."""
    if isinstance(node, A.Name) and node.id in known:
        v = known[node.id]
        return bool(v) if isinstance(v, (bool, int, float, str, type(None))) else None
    if isinstance(node, A.Constant):
        return bool(node.value)
    if isinstance(node, A.UnaryOp) and node.op == "not":
        t = _static_truth(node.operand, known)
        return None if t is None else not t
    return None


def _is_static_range(node):
    return isinstance(node, A.Call) and isinstance(node.func, A.Attribute) \
        and node.func.attr == "static_range"


class _Frame:
    """One function being checked: the kernel itself or an inlined helper."""

    def __init__(self, fn_ast, globals_, prefix, known, runtime_params):
        self.ast = fn_ast
        self.globals = globals_
        self.prefix = prefix                       # unique prefix for helper variables
        known = {**{k: v for k, v in globals_.items() if isinstance(v, (bool, int))}, **known}
        in_loop = set()
        counts = _assigned_names(fn_ast.body, {}, known, in_loop)
        # a name assigned twice is a variable; so is a runtime parameter assigned
        # in a loop (`m = kl.maximum(m, x)` carries m from one iteration to the next)
        self.mutable = {n for n, c in counts.items() if c > 1} | (in_loop & set(runtime_params))
        self.scopes = [{}]                         # SSA bindings, innermost last
        self.vars = {}                             # name -> ir.Var
        self.defined = set()                       # mutable vars definitely assigned
        self.returned = None

    def lookup(self, name):
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise KeyError(name)


class Checker:
    """Walks one kernel's AST and builds an ir.Kernel."""

    def __init__(self, jit_fn, values, num_threads):
        self.jit_fn = jit_fn
        self.values = values
        self.num_threads = num_threads
        self.all_vars = []
        self.stmts = None                          # current statement list
        self.loop_depth = 0
        self.inline_count = 0

    # ------------------------------------------------------------- errors
    def error(self, node, message):
        fn = self.frame.ast
        line = getattr(node, "line", None) or fn.line
        col = getattr(node, "col", None) or fn.col
        return CompileError(message, fn.filename, line, col, fn.source_line(line))

    # ------------------------------------------------------------- entry
    def check(self):
        fn = self.jit_fn.ast
        constexprs = {n: _py(self.values[n]) for n in self.jit_fn.constexpr_names}
        self.frame = _Frame(fn, self.jit_fn.globals, "", constexprs,
                            [p.name for p in fn.params if p.name not in constexprs])
        params = []
        body = []
        self.stmts = body
        for p in fn.params:
            value = self.values[p.name]
            if p.name in self.jit_fn.constexpr_names:
                self.frame.scopes[0][p.name] = _py(value)
                continue
            v, py_const = self._param_value(p, value)
            params.append((p.name, v))
            if p.name in self.frame.mutable:      # `x_ptr += row * stride` reassigns it
                self._set_var(A.Name(p.line, p.col, p.name), v)
            else:
                self.frame.scopes[0][p.name] = v if py_const is None else py_const
        self._block(fn.body)
        return ir.Kernel(fn.name, params, body, self.all_vars, self.num_threads, fn.filename)

    def _param_value(self, p, value):
        """(Value, or a Python constant it is specialised to) for a runtime argument."""
        if hasattr(value, "dtype") and hasattr(value, "shape") and not isinstance(value, _PY_NUMBER):
            dt = kl.from_numpy(value.dtype)
            return ir.Value("arg", [], dt, (), is_ptr=True, attrs={"param": p.name},
                            node=p, name=p.name), None
        value = _py(value)
        dt = python_dtype(value)
        attrs = {"param": p.name}
        if dt.is_int and not isinstance(value, bool):
            if value == 1:
                return ir.Value("arg", [], dt, (), attrs=attrs, node=p, name=p.name), 1
            if value % 16 == 0:
                attrs["multiple_of"] = 16
        return ir.Value("arg", [], dt, (), attrs=attrs, node=p, name=p.name), None

    # ------------------------------------------------------------- statements
    def _emit(self, stmt):
        self.stmts.append(stmt)

    def _block(self, stmts):
        for s in stmts:
            if self.frame.returned is not None and self.frame is not None:
                raise self.error(s, "code after 'return' in a helper function is not supported")
            self._stmt(s)

    def _nested(self, stmts, scoped=True):
        """Check a nested statement list into a fresh IR list."""
        saved = self.stmts
        self.stmts = []
        self.frame.scopes.append({})
        try:
            self._block(stmts)
        finally:
            self.frame.scopes.pop()
            out, self.stmts = self.stmts, saved
        return out

    def _stmt(self, s):
        method = getattr(self, "_stmt_" + type(s).__name__)
        method(s)

    def _stmt_Pass(self, s):
        pass

    def _eager(self, value):
        """Values that read memory, exchange data or snapshot a variable are
        computed where the source computes them."""
        self._emit(ir.Eval(value))
        return value

    def _stmt_ExprStmt(self, s):
        self.expr(s.value)

    def _stmt_Assign(self, s):
        value = self.expr(s.value)
        if s.unpack:
            if not isinstance(value, tuple):
                raise self.error(s.value, f"cannot unpack a {self._describe(value)} into "
                                          f"{len(s.targets)} names")
            if len(value) != len(s.targets):
                raise self.error(s.value, f"cannot unpack {len(value)} values into "
                                          f"{len(s.targets)} names")
            for t, v in zip(s.targets, value):
                self._assign(t, v)
        else:
            self._assign(s.targets[0], value)

    def _stmt_AugAssign(self, s):
        current = self.expr(s.target)
        value = self._binop(s, s.op, current, self.expr(s.value))
        self._assign(s.target, value)

    def _assign(self, target, value):
        name = target.id
        frame = self.frame
        if name in frame.mutable and not _is_compile_time(value, allow_tuple=False):
            self._set_var(target, value)
        elif name in frame.mutable and isinstance(value, _PY_NUMBER) and not isinstance(value, str):
            self._set_var(target, self._const(_py(value), python_dtype(_py(value)), target))
        else:
            if isinstance(value, ir.Value) and value.name is None:
                value.name = frame.prefix + name
            frame.scopes[-1][name] = value

    def _set_var(self, target, value):
        frame, name = self.frame, target.id
        if isinstance(value, tuple) or not isinstance(value, ir.Value):
            raise self.error(target, f"'{name}' is assigned more than once, so it must hold a "
                                     f"scalar or a block, not a {self._describe(value)}")
        var = frame.vars.get(name)
        if var is None:
            var = ir.Var(frame.prefix + name, value.dtype, value.shape, value.is_ptr, target)
            frame.vars[name] = var
            self.all_vars.append(var)
        else:
            value = self._fit_to_var(target, var, value)
        self._emit(ir.SetVar(var, value, target))
        frame.defined.add(name)

    def _fit_to_var(self, target, var, value):
        name = target.id
        if value.is_ptr != var.is_ptr or (value.is_ptr and value.dtype != var.dtype):
            raise self.error(target, f"'{name}' was {self._type_str(var)} and is assigned "
                                     f"{self._type_str(value)} here")
        if value.shape != var.shape:
            if broadcast_shapes(value.shape, var.shape) == var.shape:
                value = self._broadcast_to(value, var.shape, target)
            else:
                raise self.error(target, f"'{name}' was {self._type_str(var)} and is assigned "
                                         f"{self._type_str(value)} here; a variable keeps one "
                                         "shape (initialise it with kl.zeros(shape, dtype))")
        if value.dtype != var.dtype:
            if value.dtype.is_float and not var.dtype.is_float:
                raise self.error(target, f"'{name}' was {self._type_str(var)} and is assigned "
                                         f"{self._type_str(value)} here; initialise it with a "
                                         "float (e.g. 0.0) or convert with .to()")
            value = self._cast(value, var.dtype, target)
        return value

    def _stmt_If(self, s):
        cond = self.expr(s.cond)
        if _is_compile_time(cond):
            self._block(s.body if cond else s.orelse)
            return
        cond = self._scalar_condition(s.cond, cond, "if")
        before = set(self.frame.defined)
        then = self._nested(s.body)
        after_then = self.frame.defined
        self.frame.defined = set(before)
        orelse = self._nested(s.orelse)
        self.frame.defined = after_then & self.frame.defined
        self._emit(ir.If(cond, then, orelse, s))

    def _scalar_condition(self, node, cond, what):
        if not isinstance(cond, ir.Value):
            raise self.error(node, f"'{what}' condition must be a scalar, got a "
                                   f"{self._describe(cond)}")
        if cond.is_block:
            raise self.error(node, f"'{what}' condition must be a scalar, got a block of shape "
                                   f"{list(cond.shape)}; use kl.where or a mask for per-element "
                                   "choices")
        return cond

    def _stmt_For(self, s):
        it = s.iter
        if not isinstance(it, A.Call):
            raise self.error(it, "a for loop must iterate over range(...), kl.range(...) or "
                                 "kl.static_range(...)")
        fn = self.expr(it.func)
        args = [self.expr(a) for a in it.args]
        if it.keywords:
            raise self.error(it.keywords[0], "range() takes no keyword arguments")
        if fn is kl.static_range:
            self._static_for(s, args)
            return
        if fn not in (builtins.range, kl.range):
            raise self.error(it, "a for loop must iterate over range(...), kl.range(...) or "
                                 "kl.static_range(...)")
        if not 1 <= len(args) <= 3:
            raise self.error(it, f"range() takes 1 to 3 arguments, got {len(args)}")
        bounds = [0, *args] if len(args) == 1 else list(args)
        if len(bounds) == 2:
            bounds.append(1)
        for a, node in zip(bounds, [it] + it.args if len(args) == 1 else it.args + [it]):
            if isinstance(a, ir.Value) and (a.is_block or a.dtype.is_float or a.is_ptr):
                raise self.error(node, "range() bounds must be integer scalars")
            if not isinstance(a, ir.Value) and not isinstance(a, (int, np.integer)):
                raise self.error(node, f"range() bounds must be integers, got {a!r}")
        if not isinstance(bounds[2], ir.Value) and bounds[2] == 0:
            raise self.error(it, "range() step must not be zero")
        start, stop, step = [self._to_value(b, kl.int32, it) for b in bounds]
        frame = self.frame
        var = frame.vars.get(s.var)
        if var is None:
            var = ir.Var(frame.prefix + s.var, kl.int32, (), False, s)
            frame.vars[s.var] = var
            self.all_vars.append(var)
        elif var.shape or var.dtype != kl.int32:
            raise self.error(s, f"loop variable '{s.var}' was {self._type_str(var)} before")
        frame.defined.add(s.var)
        before = set(frame.defined)
        self.loop_depth += 1
        body = self._nested(s.body)
        self.loop_depth -= 1
        frame.defined = before
        self._emit(ir.For(var, start, stop, step, body, s))

    def _static_for(self, s, args):
        if not all(isinstance(a, (int, np.integer)) for a in args) or not 1 <= len(args) <= 3:
            raise self.error(s.iter, "kl.static_range() needs 1 to 3 compile-time integer "
                                     "bounds (constexprs or literals)")
        for i in builtins.range(*[int(a) for a in args]):
            self.frame.scopes[-1][s.var] = i
            self._block_no_break(s.body)

    def _block_no_break(self, stmts):
        for st in stmts:
            if isinstance(st, (A.Break, A.Continue)):
                raise self.error(st, "break/continue are not supported in kl.static_range loops")
            self._stmt(st)

    def _stmt_While(self, s):
        saved = self.stmts
        self.stmts = []
        cond = self.expr(s.cond)
        cond_body, self.stmts = self.stmts, saved
        if _is_compile_time(cond):
            if not cond:
                return
            cond = self._const(True, kl.int1, s.cond)
        cond = self._scalar_condition(s.cond, cond, "while")
        before = set(self.frame.defined)
        self.loop_depth += 1
        body = self._nested(s.body)
        self.loop_depth -= 1
        self.frame.defined = before
        self._emit(ir.While(cond_body, cond, body, s))

    def _stmt_Break(self, s):
        if not self.loop_depth:
            raise self.error(s, "'break' outside a loop")
        self._emit(ir.Break(s))

    def _stmt_Continue(self, s):
        if not self.loop_depth:
            raise self.error(s, "'continue' outside a loop")
        self._emit(ir.Continue(s))

    def _stmt_Return(self, s):
        frame = self.frame
        if frame.prefix:                           # an inlined helper
            if self.stmts is not frame.top_stmts:
                raise self.error(s, "a helper function may only return at the end of its body")
            frame.returned = self.expr(s.value) if s.value is not None else ()
            return
        if s.value is not None:
            raise self.error(s.value, "a kernel cannot return a value; store results with "
                                      "kl.store")
        self._emit(ir.Return(s))

    # ------------------------------------------------------------- expressions
    def expr(self, node):
        return getattr(self, "_expr_" + type(node).__name__)(node)

    def _expr_Constant(self, node):
        return node.value

    def _expr_Tuple(self, node):
        return tuple(self.expr(e) for e in node.elts)

    def _expr_Name(self, node):
        frame = self.frame
        if node.id in frame.vars and node.id in frame.mutable:
            if node.id not in frame.defined:
                raise self.error(node, f"'{node.id}' may be undefined here (it is assigned "
                                       "only in some branches or inside a loop); assign it "
                                       "before the if/loop")
            var = frame.vars[node.id]
            return self._eager(ir.Value("readvar", [], var.dtype, var.shape, var.is_ptr,
                                        {"var": var}, node, var.name))
        try:
            return frame.lookup(node.id)
        except KeyError:
            pass
        if node.id in frame.mutable and node.id not in frame.vars:
            raise self.error(node, f"'{node.id}' is used before it is assigned")
        if node.id in frame.globals:
            return frame.globals[node.id]
        if node.id in _PY_BUILTINS and _PY_BUILTINS[node.id] is not None:
            return _PY_BUILTINS[node.id]
        if self._defined_in_closed_scope(node.id):
            raise self.error(node, f"'{node.id}' is defined inside an if/loop body and used "
                                   "after it; assign it before the if/loop")
        raise self.error(node, f"unknown name '{node.id}'")

    def _defined_in_closed_scope(self, name):
        return any(isinstance(s, A.Assign) and any(t.id == name for t in s.targets)
                   for s in _walk_stmts(self.frame.ast.body))

    def _expr_Attribute(self, node):
        base = self.expr(node.value)
        if isinstance(base, ir.Value):
            if node.attr == "dtype":
                return base.dtype
            if node.attr == "shape":
                return base.shape
            if node.attr == "to":
                return _BoundMethod("to", base)
            raise self.error(node, f"a kernel value has no attribute '{node.attr}' "
                                   "(available: .to(), .dtype, .shape)")
        try:
            return getattr(base, node.attr)
        except AttributeError:
            owner = getattr(base, "__name__", type(base).__name__)
            raise self.error(node, f"'{owner}' has no attribute '{node.attr}'") from None

    def _expr_Subscript(self, node):
        base = self.expr(node.value)
        if isinstance(base, tuple) or not isinstance(base, ir.Value):
            if len(node.indices) == 1 and not isinstance(node.indices[0], A.Slice):
                idx = self.expr(node.indices[0])
                if _is_compile_time(idx):
                    try:
                        return base[idx]
                    except Exception as exc:
                        raise self.error(node, f"cannot index {base!r}: {exc}") from None
            raise self.error(node, f"cannot index a {self._describe(base)} here")
        shape, axes, src_axis = [], [], 0
        for idx in node.indices:
            if isinstance(idx, A.Slice):
                if idx.lower or idx.upper or idx.step:
                    raise self.error(idx, "only the full slice ':' is supported in block "
                                          "indexing (x[:, None])")
                if src_axis >= len(base.shape):
                    raise self.error(idx, f"too many indices for a block of shape "
                                          f"{list(base.shape)}")
                shape.append(base.shape[src_axis])
                src_axis += 1
            elif isinstance(idx, A.Constant) and idx.value is None:
                axes.append(len(shape))
                shape.append(1)
            else:
                raise self.error(idx, "block indexing supports only ':' and None "
                                      "(x[:, None], x[None, :]); load elements with kl.load")
        if src_axis == 0 and base.shape and not any(isinstance(i, A.Slice) for i in node.indices):
            src_axis = 0
        shape.extend(base.shape[src_axis:])
        out = base
        for axis in axes:
            new_shape = list(out.shape)
            new_shape.insert(axis, 1)
            out = ir.Value("expand", [out], out.dtype, tuple(new_shape), out.is_ptr,
                           {"axis": axis}, node)
        return out

    def _expr_BinOp(self, node):
        return self._binop(node, node.op, self.expr(node.left), self.expr(node.right))

    def _expr_Compare(self, node):
        return self._binop(node, node.op, self.expr(node.left), self.expr(node.right))

    def _expr_UnaryOp(self, node):
        x = self.expr(node.operand)
        if _is_compile_time(x):
            try:
                return {"-": lambda v: -v, "+": lambda v: +v, "~": lambda v: ~v,
                        "not": lambda v: not v}[node.op](x)
            except TypeError as exc:
                raise self.error(node, str(exc)) from None
        self._require_value(node.operand, x)
        if x.is_ptr:
            raise self.error(node, f"unary '{node.op}' is not defined on pointers")
        if node.op == "+":
            return x
        if node.op == "~" and not x.dtype.is_int:
            raise self.error(node, f"'~' needs an integer operand, got {x.dtype.name}")
        if node.op == "not":
            zero = self._const(0, x.dtype, node)
            return self._binop(node, "==", x, zero)
        dtype = x.dtype if node.op == "~" or x.dtype != kl.float16 else kl.float32
        if node.op == "-" and x.dtype.is_bool:
            dtype = kl.int32
        if dtype != x.dtype:
            x = self._cast(x, dtype, node)
        return ir.Value("unop", [x], dtype, x.shape, False, {"op": node.op}, node)

    def _expr_BoolOp(self, node):
        values = [self.expr(v) for v in node.values]
        if all(_is_compile_time(v) for v in values):
            result = values[0]
            for v in values[1:]:
                result = (result and v) if node.op == "and" else (result or v)
            return result
        for v, n in zip(values, node.values):
            if isinstance(v, ir.Value) and v.is_block:
                raise self.error(n, f"'{node.op}' works on scalars; combine block masks "
                                    f"with {'&' if node.op == 'and' else '|'}")
        bools = [self._truth(n, v) for v, n in zip(values, node.values)]
        out = bools[0]
        for b in bools[1:]:
            out = ir.Value("binop", [out, b], kl.int1, (), False,
                           {"op": "&&" if node.op == "and" else "||"}, node)
        return out

    def _truth(self, node, v):
        if _is_compile_time(v):
            return self._const(bool(v), kl.int1, node)
        if v.dtype.is_bool:
            return v
        return self._binop(node, "!=", v, 0)

    def _expr_IfExp(self, node):
        cond = self.expr(node.cond)
        if _is_compile_time(cond):
            return self.expr(node.body if cond else node.orelse)
        cond = self._scalar_condition(node.cond, cond, "if-else expression")
        return self._where(node, self._truth(node.cond, cond), self.expr(node.body),
                           self.expr(node.orelse))

    def _expr_Call(self, node):
        fn = self.expr(node.func)
        kwargs = {k.name: k for k in node.keywords}
        if isinstance(fn, _BoundMethod):
            return self._method(node, fn, node.args, kwargs)
        name = getattr(fn, "__kdsl_builtin__", None)
        if name is not None:
            return self._builtin(node, name, node.args, kwargs)
        if fn is kl.cdiv or fn is getattr(__import__("kdsl"), "cdiv", None):
            a, b = [self.expr(x) for x in node.args]
            if _is_compile_time(a) and _is_compile_time(b):
                return kl.cdiv(a, b)
            return self._binop(node, "//", self._binop(node, "+", a, self._binop(node, "-", b, 1)), b)
        from .jit import JITFunction
        if isinstance(fn, JITFunction):
            return self._inline(node, fn)
        if fn in (builtins.min, builtins.max):
            args = [self.expr(a) for a in node.args]
            if all(_is_compile_time(a) for a in args):
                return fn(*args)
            if len(args) != 2:
                raise self.error(node, f"{fn.__name__}() of kernel values takes 2 arguments")
            return self._elementwise2(node, "maximum" if fn is builtins.max else "minimum",
                                      *args)
        if callable(fn) and not isinstance(fn, ir.Value):
            args = [self.expr(a) for a in node.args]
            kw = {k: self.expr(v.value) for k, v in kwargs.items()}
            if all(_is_compile_time(a) for a in args) and all(_is_compile_time(v) for v in kw.values()) \
                    and _is_pure_python(fn):
                try:
                    return fn(*args, **kw)
                except Exception as exc:
                    raise self.error(node, f"calling {getattr(fn, '__name__', fn)} at compile "
                                           f"time failed: {exc}") from None
            if fn is abs:
                return self._builtin(node, "abs", node.args, kwargs)
            if fn is float or fn is int:
                x = args[0]
                return self._cast(self._require_value(node.args[0], x),
                                  kl.float32 if fn is float else kl.int32, node)
        raise self.error(node.func, f"'{_callee_name(node.func)}' is not a kernel builtin or "
                                    "a @kdsl.jit function")

    # ------------------------------------------------------------- helpers
    def _inline(self, node, fn):
        callee = fn.ast
        if node.keywords and any(k.name not in fn.arg_names for k in node.keywords):
            bad = next(k for k in node.keywords if k.name not in fn.arg_names)
            raise self.error(bad, f"{fn.__name__}() has no parameter '{bad.name}'")
        args = [self.expr(a) for a in node.args]
        kw = {k.name: self.expr(k.value) for k in node.keywords}
        if len(args) > len(fn.arg_names):
            raise self.error(node, f"{fn.__name__}() takes {len(fn.arg_names)} arguments, "
                                   f"got {len(args)}")
        bound = dict(zip(fn.arg_names, args))
        for k, v in kw.items():
            if k in bound:
                raise self.error(node, f"{fn.__name__}() got two values for '{k}'")
            bound[k] = v
        for p in fn.signature.parameters.values():
            if p.name not in bound:
                if p.default is p.empty:
                    raise self.error(node, f"{fn.__name__}() is missing argument '{p.name}'")
                bound[p.name] = p.default
        self.inline_count += 1
        if self.inline_count > 1000:
            raise self.error(node, "too many nested helper calls (recursion is not supported)")
        caller = self.frame
        frame = _Frame(callee, fn.globals, f"{callee.name}{self.inline_count}_",
                       {k: v for k, v in bound.items() if _is_compile_time(v)},
                       [p.name for p in callee.params if p.name not in fn.constexpr_names])
        reassigned = []
        for p in callee.params:
            v = bound[p.name]
            if p.name in fn.constexpr_names and not _is_compile_time(v):
                raise self.error(node, f"{fn.__name__}(): constexpr parameter '{p.name}' needs "
                                       "a compile-time value")
            if p.name in frame.mutable and isinstance(v, _PY_NUMBER) and not isinstance(v, str):
                v = self._const(_py(v), python_dtype(_py(v)), node)
            if p.name in frame.mutable and isinstance(v, ir.Value):
                reassigned.append((p, v))       # `y += ...` in a loop: a variable, defined
            else:
                frame.scopes[0][p.name] = v
        frame.top_stmts = self.stmts
        self.frame = frame
        saved_depth, self.loop_depth = self.loop_depth, 0
        try:
            for p, v in reassigned:
                self._set_var(A.Name(p.line, p.col, p.name), v)
            self._block(callee.body)
        finally:
            self.frame = caller
            self.loop_depth = saved_depth
        return frame.returned if frame.returned is not None else None

    def _method(self, node, method, args, kwargs):
        x = method.value
        if method.name == "to":
            if len(args) != 1:
                raise self.error(node, ".to() takes one dtype argument: x.to(kl.float16)")
            dtype = self.expr(args[0])
            if not isinstance(dtype, kl.dtype):
                raise self.error(args[0], f".to() needs a dtype such as kl.float32, got {dtype!r}")
            bitcast = False
            if "bitcast" in kwargs:
                bitcast = self.expr(kwargs.pop("bitcast").value)
                if not isinstance(bitcast, bool):
                    raise self.error(node, "bitcast= must be True or False")
            if kwargs:
                raise self.error(next(iter(kwargs.values())), f".to() got an unexpected "
                                                              f"argument '{next(iter(kwargs))}'")
            if bitcast:
                if x.dtype.bits != dtype.bits or x.is_ptr:
                    raise self.error(node, f"bitcast needs equal sizes: {x.dtype.name} is "
                                           f"{x.dtype.bits} bits, {dtype.name} is {dtype.bits}")
                return ir.Value("cast", [x], dtype, x.shape, False, {"bitcast": True}, node)
            return self._cast(x, dtype, node)
        raise self.error(node, f"unknown method {method.name}")

    def _require_value(self, node, v):
        if isinstance(v, ir.Value):
            return v
        if isinstance(v, _PY_NUMBER):
            v = _py(v)
            return self._const(v, python_dtype(v), node)
        raise self.error(node, f"expected a scalar or block, got a {self._describe(v)}")

    def _to_value(self, v, dtype, node):
        if isinstance(v, ir.Value):
            return v
        return self._const(_py(v), dtype, node)

    def _const(self, value, dtype, node):
        if dtype.is_float:
            value = float(value)
        elif dtype.is_bool:
            value = bool(value)
        else:
            value = int(value)
        return ir.Value("const", [], dtype, (), False, {"value": value}, node)

    def _cast(self, x, dtype, node):
        if x.dtype == dtype:
            return x
        if x.is_ptr:
            raise self.error(node, "cannot convert a pointer with .to()")
        return ir.Value("cast", [x], dtype, x.shape, False, {"bitcast": False}, node)

    def _broadcast_to(self, x, shape, node):
        if x.shape == tuple(shape):
            return x
        if not x.shape:
            return ir.Value("splat", [x], x.dtype, tuple(shape), x.is_ptr, {}, node)
        while len(x.shape) < len(shape):
            x = ir.Value("expand", [x], x.dtype, (1,) + x.shape, x.is_ptr, {"axis": 0}, node)
        return ir.Value("broadcast", [x], x.dtype, tuple(shape), x.is_ptr, {}, node)

    def _unify_shapes(self, node, *values):
        shape = ()
        for v in values:
            new = broadcast_shapes(shape, v.shape)
            if new is None:
                raise self.error(node, "shape mismatch: " + " and ".join(
                    str(list(x.shape)) for x in values) + " do not broadcast")
            shape = new
        return [self._broadcast_to(v, shape, node) for v in values], shape

    def _binop(self, node, op, a, b):
        if _is_compile_time(a) and _is_compile_time(b):
            return self._fold(node, op, a, b)
        if isinstance(a, tuple) or isinstance(b, tuple) or \
                not all(isinstance(v, (ir.Value,) + _PY_NUMBER) for v in (a, b)):
            bad = a if not isinstance(a, (ir.Value,) + _PY_NUMBER) else b
            raise self.error(node, f"operator '{op}' cannot take a {self._describe(bad)}")
        a_val, b_val = isinstance(a, ir.Value), isinstance(b, ir.Value)
        if a_val and a.is_ptr or b_val and b.is_ptr:
            return self._ptr_arith(node, op, a, b)
        # weak Python numbers adopt the other operand's type
        if not a_val:
            a = self._const(_py(a), weak_dtype(_py(a), b.dtype), node)
        if not b_val:
            b = self._const(_py(b), weak_dtype(_py(b), a.dtype), node)
        if op in ("<<", ">>", "&", "|", "^"):
            for v in (a, b):
                if not v.dtype.is_int:
                    raise self.error(node, f"operator '{op}' needs integer operands, got "
                                           f"{a.dtype.name} and {b.dtype.name}")
            dtype = kl.int1 if a.dtype.is_bool and b.dtype.is_bool else arith_dtype(a.dtype, b.dtype)
        elif op == "@":
            raise self.error(node, "use kl.dot(a, b) for matrix products")
        elif op == "/":
            dtype = kl.float32
        elif op == "//" and (a.dtype.is_float or b.dtype.is_float):
            raise self.error(node, "'//' needs integer operands; divide floats with '/'")
        elif op == "**":
            dtype = kl.float32
        else:
            dtype = arith_dtype(a.dtype, b.dtype)
        (a, b), shape = self._unify_shapes(node, a, b)
        a, b = self._cast(a, dtype, node), self._cast(b, dtype, node)
        if op in ("<", ">", "<=", ">=", "==", "!="):
            return ir.Value("cmp", [a, b], kl.int1, shape, False, {"op": op}, node)
        if op == "**":
            return ir.Value("math", [a, b], dtype, shape, False, {"fn": "pow"}, node)
        return ir.Value("binop", [a, b], dtype, shape, False, {"op": op}, node)

    def _fold(self, node, op, a, b):
        a, b = _py(a), _py(b)
        try:
            if op == "/" and isinstance(a, int) and isinstance(b, int):
                return a / b
            return _PY_OPS[op](a, b)
        except ZeroDivisionError:
            raise self.error(node, "division by zero in a compile-time expression") from None
        except TypeError as exc:
            raise self.error(node, f"invalid compile-time operation: {exc}") from None

    def _ptr_arith(self, node, op, a, b):
        if isinstance(a, ir.Value) and a.is_ptr and isinstance(b, ir.Value) and b.is_ptr:
            raise self.error(node, f"operator '{op}' on two pointers is not supported")
        ptr, off = (a, b) if isinstance(a, ir.Value) and a.is_ptr else (b, a)
        if op not in ("+", "-") or (op == "-" and ptr is b):
            raise self.error(node, f"operator '{op}' is not defined on pointers; pointers "
                                   "take + and - of integer offsets")
        if not isinstance(off, ir.Value):
            if not isinstance(_py(off), int) or isinstance(off, bool):
                raise self.error(node, f"pointer offsets must be integers, got {off!r}")
            off = self._const(_py(off), kl.int32, node)
        if not off.dtype.is_int or off.dtype.is_bool:
            raise self.error(node, f"pointer offsets must be integers, got {off.dtype.name}")
        if op == "-":
            off = ir.Value("unop", [off], off.dtype if off.dtype.is_signed else kl.int32,
                           off.shape, False, {"op": "-"}, node)
        (ptr, off), shape = self._unify_shapes(node, ptr, off)
        return ir.Value("binop", [ptr, off], ptr.dtype, shape, True, {"op": "+"}, node)

    def _where(self, node, c, a, b):
        a = self._require_value(node, a) if not isinstance(a, _PY_NUMBER) else a
        b = self._require_value(node, b) if not isinstance(b, _PY_NUMBER) else b
        c = self._require_value(node, c)
        if isinstance(a, ir.Value) and isinstance(b, ir.Value):
            if a.is_ptr or b.is_ptr:
                if not (a.is_ptr and b.is_ptr and a.dtype == b.dtype):
                    raise self.error(node, "kl.where on pointers needs two pointers of one type")
                dtype = a.dtype
            else:
                dtype = arith_dtype(a.dtype, b.dtype) if a.dtype != b.dtype else a.dtype
        elif isinstance(a, ir.Value):
            dtype = a.dtype
            b = self._const(_py(b), weak_dtype(_py(b), a.dtype), node)
        elif isinstance(b, ir.Value):
            dtype = b.dtype
            a = self._const(_py(a), weak_dtype(_py(a), b.dtype), node)
        else:
            dtype = python_dtype(_py(a)) if python_dtype(_py(a)).is_float else python_dtype(_py(b))
            a, b = self._const(_py(a), dtype, node), self._const(_py(b), dtype, node)
        if not c.dtype.is_bool:
            c = self._binop(node, "!=", c, 0)
        (c, a, b), shape = self._unify_shapes(node, c, a, b)
        if not a.is_ptr:
            a, b = self._cast(a, dtype, node), self._cast(b, dtype, node)
        return ir.Value("where", [c, a, b], dtype, shape, a.is_ptr, {}, node)

    def _elementwise2(self, node, fn, a, b):
        a = self._require_value(node, a) if isinstance(a, ir.Value) or not isinstance(b, ir.Value) else a
        if not isinstance(a, ir.Value):
            a = self._const(_py(a), weak_dtype(_py(a), b.dtype), node)
        if not isinstance(b, ir.Value):
            b = self._const(_py(b), weak_dtype(_py(b), a.dtype), node)
        if a.is_ptr or b.is_ptr:
            raise self.error(node, f"kl.{fn} is not defined on pointers")
        dtype = arith_dtype(a.dtype, b.dtype)
        (a, b), shape = self._unify_shapes(node, a, b)
        a, b = self._cast(a, dtype, node), self._cast(b, dtype, node)
        return ir.Value("math", [a, b], dtype, shape, False, {"fn": fn}, node)

    # ------------------------------------------------------------- builtins
    def _args(self, node, name, args, kwargs, params, required):
        """Bind a builtin's AST arguments to its parameter names -> {name: AST node}."""
        if len(args) > len(params):
            raise self.error(node, f"kl.{name}() takes at most {len(params)} arguments "
                                   f"({', '.join(params)}), got {len(args)}")
        bound = dict(zip(params, args))
        for k, v in kwargs.items():
            if k not in params:
                raise self.error(v, f"kl.{name}() got an unexpected argument '{k}'")
            if k in bound:
                raise self.error(v, f"kl.{name}() got two values for '{k}'")
            bound[k] = v.value
        for p in params[:required]:
            if p not in bound:
                raise self.error(node, f"kl.{name}() is missing argument '{p}'")
        return bound

    def _constexpr_int(self, node, value, what):
        if not isinstance(_py(value), int) or isinstance(value, bool):
            raise self.error(node, f"{what} must be a compile-time integer (a constexpr or "
                                   f"literal), got {self._describe(value)}")
        return int(_py(value))

    def _shape(self, node, value, name):
        if isinstance(value, (int, np.integer)):
            value = (value,)
        if not isinstance(value, tuple):
            raise self.error(node, f"kl.{name}(): the shape must be a tuple of constexpr "
                                   f"integers, got {self._describe(value)}")
        shape = tuple(self._constexpr_int(node, d, f"kl.{name}(): each dimension") for d in value)
        for d in shape:
            if not _is_pow2(d):
                raise self.error(node, f"kl.{name}(): each block dimension must be a power of "
                                       f"two, got {list(shape)}")
        return shape

    def _dtype_arg(self, node, value, name):
        if isinstance(value, kl.dtype):
            return value
        if value is None:
            return kl.float32
        try:
            dt = kl.from_numpy(value)
            if dt is not None:
                return dt
        except TypeError:
            pass
        raise self.error(node, f"kl.{name}(): expected a dtype such as kl.float32, got {value!r}")

    def _builtin(self, node, name, args, kwargs):
        handler = getattr(self, "_b_" + name, None)
        if handler is None:
            raise self.error(node, f"kl.{name} cannot be used here")
        return handler(node, args, kwargs)

    def _axis_arg(self, node, value, name):
        axis = self._constexpr_int(node, value, f"kl.{name}(): axis")
        if axis not in (0, 1, 2):
            raise self.error(node, f"kl.{name}(): axis must be 0, 1 or 2, got {axis}")
        return axis

    def _b_program_id(self, node, args, kwargs):
        b = self._args(node, "program_id", args, kwargs, ["axis"], 1)
        axis = self._axis_arg(b["axis"], self.expr(b["axis"]), "program_id")
        return ir.Value("program_id", [], kl.int32, (), False, {"axis": axis}, node)

    def _b_num_programs(self, node, args, kwargs):
        b = self._args(node, "num_programs", args, kwargs, ["axis"], 1)
        axis = self._axis_arg(b["axis"], self.expr(b["axis"]), "num_programs")
        return ir.Value("num_programs", [], kl.int32, (), False, {"axis": axis}, node)

    def _b_arange(self, node, args, kwargs):
        b = self._args(node, "arange", args, kwargs, ["start", "end"], 2)
        start = self._constexpr_int(b["start"], self.expr(b["start"]), "kl.arange(): start")
        end = self._constexpr_int(b["end"], self.expr(b["end"]), "kl.arange(): end")
        if not _is_pow2(end - start):
            raise self.error(node, f"kl.arange({start}, {end}): the length end - start must be "
                                   "a power of two")
        return ir.Value("arange", [], kl.int32, (end - start,), False,
                        {"start": start, "end": end}, node)

    def _b_zeros(self, node, args, kwargs):
        b = self._args(node, "zeros", args, kwargs, ["shape", "dtype"], 1)
        shape = self._shape(node, self.expr(b["shape"]), "zeros")
        dtype = self._dtype_arg(b.get("dtype", node), self.expr(b["dtype"]) if "dtype" in b else None, "zeros")
        return self._broadcast_to(self._const(0, dtype, node), shape, node)

    def _b_full(self, node, args, kwargs):
        b = self._args(node, "full", args, kwargs, ["shape", "value", "dtype"], 2)
        shape = self._shape(node, self.expr(b["shape"]), "full")
        value = self.expr(b["value"])
        dtype = self._dtype_arg(b.get("dtype", node), self.expr(b["dtype"]) if "dtype" in b else
                                (value.dtype if isinstance(value, ir.Value) else python_dtype(_py(value))),
                                "full")
        if isinstance(value, ir.Value):
            if value.is_block:
                raise self.error(b["value"], "kl.full(): the value must be a scalar")
            value = self._cast(value, dtype, node)
        elif isinstance(value, _PY_NUMBER):
            value = self._const(_py(value), dtype, node)
        else:
            raise self.error(b["value"], f"kl.full(): the value must be a number, got {value!r}")
        return self._broadcast_to(value, shape, node)

    def _pointer_arg(self, node, ptr, name):
        if not isinstance(ptr, ir.Value) or not ptr.is_ptr:
            raise self.error(node, f"kl.{name}(): the first argument must be a pointer "
                                   f"(a tensor parameter plus offsets), got "
                                   f"{self._describe(ptr)}")
        return ptr

    def _mask_arg(self, node, mask, shape, name):
        if mask is None:
            return None
        if _is_compile_time(mask):
            return None if mask else self._broadcast_to(self._const(False, kl.int1, node), shape, node)
        if not mask.dtype.is_bool:
            raise self.error(node, f"kl.{name}(): mask must be a boolean block (a comparison), "
                                   f"got {mask.dtype.name}")
        if broadcast_shapes(mask.shape, shape) != tuple(shape):
            raise self.error(node, f"kl.{name}(): mask of shape {list(mask.shape)} does not "
                                   f"match the pointer's shape {list(shape)}")
        return self._broadcast_to(mask, shape, node)

    def _b_load(self, node, args, kwargs):
        b = self._args(node, "load", args, kwargs, ["pointer", "mask", "other"], 1)
        ptr = self._pointer_arg(b["pointer"], self.expr(b["pointer"]), "load")
        mask = self.expr(b["mask"]) if "mask" in b else None
        other = self.expr(b["other"]) if "other" in b else None
        mask_node = b.get("mask", node)
        if isinstance(mask, ir.Value) and broadcast_shapes(mask.shape, ptr.shape) != ptr.shape:
            shape = broadcast_shapes(mask.shape, ptr.shape)
            if shape is None:
                raise self.error(mask_node, f"kl.load(): mask of shape {list(mask.shape)} does "
                                            f"not match the pointer's shape {list(ptr.shape)}")
            ptr = self._broadcast_to(ptr, shape, node)
        mask = self._mask_arg(mask_node, mask, ptr.shape, "load")
        dtype = kl.float32 if ptr.dtype == kl.float16 else ptr.dtype
        if other is not None:
            if mask is None:
                other = None
            elif isinstance(other, ir.Value):
                if broadcast_shapes(other.shape, ptr.shape) != ptr.shape:
                    raise self.error(b["other"], f"kl.load(): other of shape {list(other.shape)}"
                                                 f" does not match {list(ptr.shape)}")
                other = self._broadcast_to(self._cast(other, dtype, node), ptr.shape, node)
            elif isinstance(other, _PY_NUMBER):
                other = self._const(_py(other), dtype, node)
                if ptr.shape:
                    other = self._broadcast_to(other, ptr.shape, node)
            else:
                raise self.error(b["other"], f"kl.load(): other must be a number or block, got "
                                             f"{other!r}")
        return self._eager(ir.Value("load", [ptr, mask, other], dtype, ptr.shape, False, {}, node))

    def _b_store(self, node, args, kwargs):
        b = self._args(node, "store", args, kwargs, ["pointer", "value", "mask"], 2)
        ptr = self._pointer_arg(b["pointer"], self.expr(b["pointer"]), "store")
        value = self._require_value(b["value"], self.expr(b["value"]))
        if value.is_ptr:
            raise self.error(b["value"], "kl.store(): cannot store a pointer")
        mask = self.expr(b["mask"]) if "mask" in b else None
        shape = ptr.shape
        for v, n in ((value, b["value"]), (mask, b.get("mask"))):
            if isinstance(v, ir.Value):
                new = broadcast_shapes(shape, v.shape)
                if new is None or (new != ptr.shape and v is value):
                    raise self.error(n, f"kl.store(): {'value' if v is value else 'mask'} of "
                                        f"shape {list(v.shape)} does not match the pointer's "
                                        f"shape {list(ptr.shape)}")
                shape = new
        ptr = self._broadcast_to(ptr, shape, node)
        mask = self._mask_arg(b.get("mask", node), mask, shape, "store")
        value = self._broadcast_to(value, shape, node)
        if ptr.dtype != value.dtype:
            if ptr.dtype.is_int and value.dtype.is_float:
                raise self.error(b["value"], f"kl.store(): storing {value.dtype.name} values "
                                             f"to an {ptr.dtype.name} pointer; convert with "
                                             f".to(kl.{ptr.dtype.name}) first")
            value = self._cast(value, kl.float32 if ptr.dtype == kl.float16 else ptr.dtype, node)
        self._emit(ir.Store(ptr, value, mask, node))
        return None

    def _b_dot(self, node, args, kwargs):
        b = self._args(node, "dot", args, kwargs, ["a", "b", "acc"], 2)
        x = self._require_value(b["a"], self.expr(b["a"]))
        y = self._require_value(b["b"], self.expr(b["b"]))
        for v, n in ((x, b["a"]), (y, b["b"])):
            if len(v.shape) != 2 or v.is_ptr:
                raise self.error(n, f"kl.dot(): operands must be 2-D blocks, got "
                                    f"{self._describe(v)}")
        if x.shape[1] != y.shape[0]:
            raise self.error(node, f"kl.dot(): inner dimensions differ: {list(x.shape)} @ "
                                   f"{list(y.shape)}")
        out_dtype = kl.int32 if x.dtype.is_int and y.dtype.is_int else kl.float32
        x, y = self._cast(x, out_dtype, node), self._cast(y, out_dtype, node)
        shape = (x.shape[0], y.shape[1])
        acc = None
        if "acc" in b:
            acc = self.expr(b["acc"])
            if acc is not None:
                acc = self._require_value(b["acc"], acc)
                if acc.shape != shape:
                    raise self.error(b["acc"], f"kl.dot(): acc has shape {list(acc.shape)}, "
                                               f"the product has {list(shape)}")
                acc = self._cast(acc, out_dtype, node)
        return self._eager(ir.Value("dot", [x, y, acc], out_dtype, shape, False, {}, node))

    def _b_trans(self, node, args, kwargs):
        if not args:
            raise self.error(node, "kl.trans() needs a block")
        x = self._require_value(args[0], self.expr(args[0]))
        perm = tuple(self.expr(a) for a in args[1:]) or None
        if perm and len(perm) == 1 and isinstance(perm[0], tuple):
            perm = perm[0]
        if perm is None:
            if len(x.shape) != 2:
                raise self.error(node, f"kl.trans() without a permutation needs a 2-D block, "
                                       f"got shape {list(x.shape)}")
            perm = (1, 0)
        if sorted(perm) != list(builtins.range(len(x.shape))):
            raise self.error(node, f"kl.trans(): {perm} is not a permutation of the axes of a "
                                   f"block of shape {list(x.shape)}")
        shape = tuple(x.shape[p] for p in perm)
        return self._eager(ir.Value("trans", [x], x.dtype, shape, x.is_ptr, {"perm": perm}, node))

    def _b_reshape(self, node, args, kwargs):
        b = self._args(node, "reshape", args, kwargs, ["x", "shape"], 2)
        x = self._require_value(b["x"], self.expr(b["x"]))
        shape = self._shape(node, self.expr(b["shape"]), "reshape")
        n = 1
        for d in shape:
            n *= d
        if n != x.numel:
            raise self.error(node, f"kl.reshape(): cannot reshape a block of shape "
                                   f"{list(x.shape)} ({x.numel} elements) to {list(shape)}")
        if shape == x.shape:
            return x
        return self._eager(ir.Value("reshape", [x], x.dtype, shape, x.is_ptr, {}, node))

    def _reduce(self, node, op, args, kwargs):
        params = ["x", "axis", "keep_dims"]
        b = self._args(node, op, args, kwargs, params, 2 if op.startswith("arg") else 1)
        x = self._require_value(b["x"], self.expr(b["x"]))
        if x.is_ptr:
            raise self.error(node, f"kl.{op}() of pointers is not supported")
        axis = self.expr(b["axis"]) if "axis" in b else None
        keep = self.expr(b["keep_dims"]) if "keep_dims" in b else False
        if not x.shape:
            return x if not op.startswith("arg") else self._const(0, kl.int32, node)
        if axis is None:
            if op.startswith("arg"):
                raise self.error(node, f"kl.{op}() needs an axis")
            out = x
            for a in reversed(builtins.range(len(x.shape))):
                out = self._reduce_axis(node, op, out, a, keep)
            return out
        axis = self._constexpr_int(b["axis"], axis, f"kl.{op}(): axis")
        if not -len(x.shape) <= axis < len(x.shape):
            raise self.error(b["axis"], f"kl.{op}(): axis {axis} is out of range for a block "
                                        f"of shape {list(x.shape)}")
        return self._reduce_axis(node, op, x, axis % len(x.shape), keep)

    def _reduce_axis(self, node, op, x, axis, keep):
        dtype = reduce_dtype(op, x.dtype)
        if not op.startswith("arg"):
            x = self._cast(x, dtype, node)
        shape = x.shape[:axis] + x.shape[axis + 1:]
        out = self._eager(ir.Value("reduce", [x], dtype, shape, False, {"op": op, "axis": axis}, node))
        if keep:
            out = ir.Value("expand", [out], dtype, x.shape[:axis] + (1,) + x.shape[axis + 1:],
                           False, {"axis": axis}, node)
        return out

    def _b_sum(self, node, args, kwargs):
        return self._reduce(node, "sum", args, kwargs)

    def _b_max(self, node, args, kwargs):
        return self._reduce(node, "max", args, kwargs)

    def _b_min(self, node, args, kwargs):
        return self._reduce(node, "min", args, kwargs)

    def _b_argmax(self, node, args, kwargs):
        return self._reduce(node, "argmax", args, kwargs)

    def _b_argmin(self, node, args, kwargs):
        return self._reduce(node, "argmin", args, kwargs)

    def _b_where(self, node, args, kwargs):
        b = self._args(node, "where", args, kwargs, ["condition", "x", "y"], 3)
        return self._where(node, self.expr(b["condition"]), self.expr(b["x"]), self.expr(b["y"]))

    def _math1(self, node, fn, args, kwargs):
        b = self._args(node, fn, args, kwargs, ["x"], 1)
        x = self.expr(b["x"])
        if _is_compile_time(x) and isinstance(x, _PY_NUMBER):
            return _fold_math(fn, _py(x))
        x = self._require_value(b["x"], x)
        if x.is_ptr:
            raise self.error(node, f"kl.{fn}() is not defined on pointers")
        dtype = x.dtype if fn == "abs" and x.dtype.is_int and not x.dtype.is_bool else kl.float32
        x = self._cast(x, dtype, node)
        return ir.Value("math", [x], dtype, x.shape, False, {"fn": fn}, node)

    def _b_maximum(self, node, args, kwargs):
        b = self._args(node, "maximum", args, kwargs, ["x", "y"], 2)
        return self._elementwise2(node, "maximum", self.expr(b["x"]), self.expr(b["y"]))

    def _b_minimum(self, node, args, kwargs):
        b = self._args(node, "minimum", args, kwargs, ["x", "y"], 2)
        return self._elementwise2(node, "minimum", self.expr(b["x"]), self.expr(b["y"]))

    def _b_fma(self, node, args, kwargs):
        b = self._args(node, "fma", args, kwargs, ["x", "y", "z"], 3)
        vals = [self.expr(b[k]) for k in ("x", "y", "z")]
        vals = [self._cast(self._require_value(node, v), kl.float32, node) for v in vals]
        vals, shape = self._unify_shapes(node, *vals)
        return ir.Value("math", vals, kl.float32, shape, False, {"fn": "fma"}, node)

    # inline assembly: a constraint letter and the dtypes its register holds
    _ASM_REGISTERS = {"r": (kl.int32, kl.uint32), "f": (kl.float32,)}

    def _b_inline_asm_elementwise(self, node, args, kwargs):
        b = self._args(node, "inline_asm_elementwise", args, kwargs,
                       ["asm", "constraints", "args", "dtype", "is_pure", "pack"], 4)
        name = "kl.inline_asm_elementwise()"
        text = self.expr(b["asm"])
        if not isinstance(text, str):
            raise self.error(b["asm"], f"{name}: asm must be a string, got "
                                       f"{self._describe(text)}")
        constraints = self.expr(b["constraints"])
        if not isinstance(constraints, str):
            raise self.error(b["constraints"], f"{name}: constraints must be a string such as "
                                               f"\"=r,r,r\", got {self._describe(constraints)}")
        operands = self.expr(b["args"])
        if not isinstance(operands, tuple):
            operands = (operands,)
        dtype = self._dtype_arg(b["dtype"], self.expr(b["dtype"]), "inline_asm_elementwise")
        pure = _py(self.expr(b["is_pure"])) if "is_pure" in b else True
        if not isinstance(pure, bool):
            raise self.error(b["is_pure"], f"{name}: is_pure must be True or False")
        pack = self._constexpr_int(b["pack"], self.expr(b["pack"]), f"{name}: pack") \
            if "pack" in b else 1
        if pack != 1:
            raise self.error(b["pack"], f"{name}: pack={pack} is not supported; one element "
                                        f"per asm (pack=1)")
        letters = [c.strip() for c in constraints.split(",")]
        if len(letters) != 1 + len(operands) or not letters[0].startswith("="):
            raise self.error(b["constraints"], f"{name}: constraints {constraints!r} must name "
                                               f"the result (\"=r\" or \"=f\") and then each of "
                                               f"the {len(operands)} args, comma-separated")
        for i, letter in enumerate(letters):
            if i and letter.startswith("="):
                raise self.error(b["constraints"], f"{name}: only the first constraint is the "
                                                   f"result ('='); {letter!r} is argument "
                                                   f"{i - 1}'s")
            letter = letter.lstrip("=")
            allowed = self._ASM_REGISTERS.get(letter)
            if allowed is None:
                raise self.error(b["constraints"], f"{name}: constraint {letters[i]!r} is not "
                                                   f"supported; use \"r\" (32-bit integer) or "
                                                   f"\"f\" (float32)")
            if i == 0 and dtype not in allowed:
                raise self.error(b["dtype"], f"{name}: a {letters[0]!r} result holds "
                                             f"{' or '.join(d.name for d in allowed)}, not "
                                             f"{dtype.name}")
        values = []
        for i, v in enumerate(operands):
            allowed = self._ASM_REGISTERS[letters[i + 1].lstrip("=")]
            wrong = (v.is_ptr or v.dtype not in allowed) if isinstance(v, ir.Value) else \
                isinstance(_py(v), float) and not allowed[0].is_float
            if wrong:
                raise self.error(b["args"], f"{name}: argument {i} is {self._describe(v)}, "
                                            f"but its constraint {letters[i + 1]!r} takes "
                                            f"{' or '.join(d.name for d in allowed)}")
            values.append(self._to_value(self._require_value(b["args"], v), allowed[0], node)
                          if not isinstance(v, ir.Value) else v)
        if not values:
            raise self.error(b["args"], f"{name}: args must hold at least one operand")
        values, shape = self._unify_shapes(node, *values)
        # the text in C's asm syntax: %N operands, a literal % doubled
        c_text = re.sub(r"\$(\d+)", r"%\1", text.replace("%", "%%"))
        unsupported = self.error(node, f"{name}: this device's OpenCL compiler takes no "
                                       f"inline PTX (NVIDIA's does); pick a portable form of "
                                       f"the kernel for it")
        return ir.Value("asm", values, dtype, shape, False,
                        {"text": c_text, "constraints": letters, "pure": pure,
                         "unsupported": unsupported}, node)

    def _b_multiple_of(self, node, args, kwargs):
        b = self._args(node, "multiple_of", args, kwargs, ["x", "n"], 2)
        x = self.expr(b["x"])
        n = self._constexpr_int(b["n"], self.expr(b["n"]), "kl.multiple_of(): n")
        if isinstance(x, ir.Value) and not x.is_block:
            x = ir.Value("binop", [x, self._const(0, x.dtype, node)], x.dtype, (), x.is_ptr,
                         {"op": "+", "multiple_of": n}, node, x.name)
        return x

    def _b_max_contiguous(self, node, args, kwargs):
        b = self._args(node, "max_contiguous", args, kwargs, ["x", "n"], 2)
        x = self.expr(b["x"])
        n = self._constexpr_int(b["n"], self.expr(b["n"]), "kl.max_contiguous(): n")
        if n < 1 or n & (n - 1):
            raise self.error(b["n"], f"kl.max_contiguous(): n must be a power of two >= 1, "
                                     f"got {n}")
        if not (isinstance(x, ir.Value) and x.is_block and x.dtype.is_int
                and not x.dtype.is_bool and not x.is_ptr):
            raise self.error(b["x"], f"kl.max_contiguous() takes a block of integer offsets, "
                                     f"got {self._describe(x)}")
        # x + 0, marked: the code generator gives each work-item whole runs of
        # n elements of the last dimension (see layouts.default_layout's vector)
        hinted = self._binop(node, "+", x, 0)
        hinted.attrs["contiguous"] = n
        return hinted

    def _b_cdiv(self, node, args, kwargs):
        a, b = [self.expr(x) for x in args]
        if _is_compile_time(a) and _is_compile_time(b):
            return kl.cdiv(a, b)
        return self._binop(node, "//", self._binop(node, "+", a, self._binop(node, "-", b, 1)), b)

    def _b_static_range(self, node, args, kwargs):
        raise self.error(node, "kl.static_range() can only be used in a for statement")

    _b_range = _b_static_range

    # ------------------------------------------------------------- messages
    def _describe(self, v):
        if isinstance(v, ir.Value):
            return self._type_str(v)
        if isinstance(v, tuple):
            return "tuple"
        if v is None:
            return "None"
        return f"{type(v).__name__} ({v!r})" if isinstance(v, (str,) + _PY_NUMBER) else type(v).__name__

    @staticmethod
    def _type_str(v):
        t = f"pointer to {v.dtype.name}" if v.is_ptr else v.dtype.name
        return f"a block of {t} with shape {list(v.shape)}" if v.shape else f"a scalar {t}"


for _fn in _MATH_FNS:
    setattr(Checker, "_b_" + _fn, lambda self, node, args, kwargs, _fn=_fn:
            self._math1(node, _fn, args, kwargs))


class _BoundMethod:
    def __init__(self, name, value):
        self.name, self.value = name, value


def _is_compile_time(v, allow_tuple=True):
    if isinstance(v, ir.Value):
        return False
    if isinstance(v, tuple):
        return allow_tuple and all(_is_compile_time(x) for x in v)
    return True


def _is_pure_python(fn):
    return isinstance(fn, (pytypes.BuiltinFunctionType, type)) or \
        getattr(fn, "__module__", None) in ("math", "builtins", "operator") or \
        fn in (float, int, bool, len, builtins.range)


def _callee_name(node):
    if isinstance(node, A.Name):
        return node.id
    if isinstance(node, A.Attribute):
        return _callee_name(node.value) + "." + node.attr
    return "expression"


def _walk_stmts(stmts):
    for s in stmts:
        yield s
        for attr in ("body", "orelse"):
            yield from _walk_stmts(getattr(s, attr, []) or [])


def _fold_math(fn, x):
    if fn == "rsqrt":
        return 1.0 / math.sqrt(x)
    if fn == "sigmoid":
        return 1.0 / (1.0 + math.exp(-x))
    if fn == "exp2":
        return 2.0 ** x
    if fn == "abs":
        return builtins.abs(x)
    return getattr(math, fn)(x)


_PY_OPS = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "/": lambda a, b: a / b, "//": lambda a, b: a // b, "%": lambda a, b: a % b,
    "**": lambda a, b: a ** b, "&": lambda a, b: a & b, "|": lambda a, b: a | b,
    "^": lambda a, b: a ^ b, "<<": lambda a, b: a << b, ">>": lambda a, b: a >> b,
    "<": lambda a, b: a < b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
    "@": lambda a, b: a @ b,
}


def check(jit_fn, values, num_threads):
    """Check a kernel for one launch's argument types; returns an ir.Kernel."""
    return Checker(jit_fn, values, num_threads).check()
