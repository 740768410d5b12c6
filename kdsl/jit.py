"""`@kdsl.jit`: a Python function becomes a kernel launched as `kernel[grid](...)`.

Binding a launch's arguments to the kernel's parameters and checking them is
shared by the OpenCL path and the interpreter, so both reject the same bad
launches with the same errors.
"""
import inspect
import os

import numpy as np

from . import language as kl
from . import capture
from .errors import CompileError, LaunchError
from .parser import parse_function, read_function_source
from .tensor import Tensor

_MISSING = inspect.Parameter.empty


def _interpret_default():
    return os.environ.get("KDSL_INTERPRET", "0") not in ("", "0", "false", "False")


class JITFunction:
    """A kernel: launch with `kernel[grid](*args, **constexprs, num_threads=N)`.

    >>> @kdsl.jit
    ... def fill(out_ptr, value, BLOCK: kl.constexpr):
    ...     kl.store(out_ptr + kl.arange(0, BLOCK), kl.full((BLOCK,), value, kl.float32))
    """

    def __init__(self, fn, interpret=None):
        self.fn = fn
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._interpret = interpret
        self.signature = inspect.signature(fn)
        self.arg_names = list(self.signature.parameters)
        self.constexpr_names = [n for n, p in self.signature.parameters.items()
                                if _is_constexpr_annotation(p.annotation, fn)]
        # per parameter (name, is_constexpr), and the defaults: what every
        # launch walks, worked out once (a launch's Python time is the cost
        # of a small kernel)
        constexprs = set(self.constexpr_names)
        self._params = [(n, n in constexprs) for n in self.arg_names]
        self._defaults = {n: p.default for n, p in self.signature.parameters.items()
                          if p.default is not _MISSING}
        self._ast = None
        self._compiled = {}          # specialisation key -> compiled kernel
        self._relaunch = None        # how it was last launched (kdsl/relaunch.py)
        # the source as Python compiled it, parsed at the first launch: a file
        # edited in between would otherwise be parsed in its new form
        try:
            self._source = read_function_source(fn)
        except CompileError as error:
            self._source = error     # raised when the kernel is first used

    @property
    def interpret(self):
        return _interpret_default() if self._interpret is None else self._interpret

    @property
    def ast(self):
        """The parsed kernel (kdsl.ast_nodes.Function), parsed once."""
        if self._ast is None:
            if isinstance(self._source, CompileError):
                raise self._source
            self._ast = parse_function(self.fn, self._source)
        return self._ast

    @property
    def globals(self):
        """Module-level names the kernel can read (constants, kl, other kernels)."""
        g = dict(self.fn.__globals__)
        if self.fn.__closure__:
            for name, cell in zip(self.fn.__code__.co_freevars, self.fn.__closure__):
                try:
                    g[name] = cell.cell_contents
                except ValueError:
                    pass
        return g

    def __getitem__(self, grid):
        def launcher(*args, **kwargs):
            return self.run(grid, args, kwargs)
        return launcher

    def prepare(self, grid, *args, **kwargs):
        """Bind arguments once for repeated launches: `kernel.prepare(grid, ...)()` enqueues.

        See kdsl/prepared.py; the interpreter has no prepared form.
        """
        self.ast
        values, num_threads = self.bind(args, kwargs)
        if self.interpret:
            raise LaunchError(f"{self.__name__}.prepare(): the interpreter runs launches one by "
                              f"one; use {self.__name__}[grid](...)")
        from .prepared import PreparedLaunch
        return PreparedLaunch(self, grid, values, num_threads)

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"kernel '{self.__name__}' must be launched as "
                           f"{self.__name__}[grid](...) from Python; inside another kernel "
                           "it can be called directly")

    def __repr__(self):
        return f"<kdsl.jit kernel {self.__name__}>"

    # ---------------------------------------------------------------- launch
    def bind(self, args, kwargs):
        """Map a launch's arguments to parameter names; returns (values, num_threads).

        Constexpr parameters may be given by keyword or position; a missing
        argument, an unknown keyword or a wrong type raises LaunchError.
        """
        num_threads = kwargs.get("num_threads")
        if num_threads is not None:
            if not isinstance(num_threads, (int, np.integer)) or num_threads < 1 \
                    or num_threads & (num_threads - 1):
                raise LaunchError(f"{self.__name__}: num_threads must be a power of two >= 1, "
                                  f"got {num_threads!r}")
            num_threads = int(num_threads)
        if len(args) > len(self.arg_names):
            raise LaunchError(f"{self.__name__}() takes {len(self.arg_names)} arguments "
                              f"({', '.join(self.arg_names)}) but {len(args)} were given")
        values = dict(zip(self.arg_names, args))
        for name, value in kwargs.items():
            if name == "num_threads":
                continue
            if name not in self.signature.parameters:
                raise LaunchError(f"{self.__name__}() got an unexpected argument '{name}'; "
                                  f"its parameters are {', '.join(self.arg_names)}")
            if name in values:
                raise LaunchError(f"{self.__name__}() got two values for argument '{name}'")
            values[name] = value
        if len(values) < len(self._params):
            missing = []
            for name, _ in self._params:
                if name not in values:
                    if name in self._defaults:
                        values[name] = self._defaults[name]
                    else:
                        missing.append(name)
            if missing:
                raise LaunchError(f"{self.__name__}() is missing argument(s): "
                                  f"{', '.join(missing)}")
        for name, is_constexpr in self._params:
            v = values[name]
            if is_constexpr:
                if isinstance(v, kl.constexpr):
                    v = values[name] = v.value
                if not isinstance(v, _CONSTEXPR_TYPES):
                    raise LaunchError(f"{self.__name__}(): constexpr '{name}' must be a Python "
                                      f"int, float, bool, str or dtype, got {type(v).__name__}")
            elif type(v) not in _PLAIN_SCALARS and not (type(v) is Tensor
                                                        and _KERNEL_DTYPES.get(v.dtype)):
                _check_runtime_arg(self.__name__, name, v)
        return values, num_threads

    def grid_of(self, grid, values):
        """Evaluate a grid tuple or a `meta -> tuple` callable into 3 ints."""
        if callable(grid):
            grid = grid(dict(values))
        if isinstance(grid, (int, np.integer)):
            grid = (grid,)
        if not isinstance(grid, (tuple, list)) or not 1 <= len(grid) <= 3:
            raise LaunchError(f"{self.__name__}: the grid must be a tuple of 1 to 3 ints "
                              f"(or a callable returning one), got {grid!r}")
        out = []
        for g in grid:
            if not isinstance(g, (int, np.integer)) or isinstance(g, bool) or g < 0:
                raise LaunchError(f"{self.__name__}: grid sizes must be non-negative ints, "
                                  f"got {grid!r}")
            out.append(int(g))
        return tuple(out) + (1,) * (3 - len(out))

    def run(self, grid, args, kwargs):
        relaunch = self._relaunch
        if relaunch is not None and not callable(grid) and relaunch.alike(args, kwargs) \
                and not self.interpret:
            # arguments like the last launch's: its compiled kernel, no binding
            values = relaunch.values(args)
            grid = self.grid_of(grid, values)
            event = relaunch.compiled(grid, values)
            capture.record(self, grid, values, relaunch.num_threads, event)
            return event
        self.ast                      # a syntax error is reported before argument errors
        values, num_threads = self.bind(args, kwargs)
        grid = self.grid_of(grid, values)
        if self.interpret:
            from .interpreter import interpret
            event = interpret(self, grid, values, num_threads)
        else:
            from . import launch
            event = launch.launch(self, grid, values, num_threads, args, kwargs)
        capture.record(self, grid, values, num_threads, event)
        return event


def _is_constexpr_annotation(annotation, fn):
    if annotation is kl.constexpr or isinstance(annotation, kl.constexpr):
        return True
    if isinstance(annotation, str):     # from __future__ import annotations
        return annotation.split(".")[-1] == "constexpr"
    return False


_CONSTEXPR_TYPES = (int, float, bool, str, np.integer, np.floating, kl.dtype, type(None), tuple)
_PLAIN_SCALARS = frozenset({int, float, bool})       # runtime arguments with nothing to check
_KERNEL_DTYPES = {}                                   # numpy dtype -> whether kernels take it


def _check_runtime_arg(kernel, name, value):
    if isinstance(value, (Tensor, np.ndarray)):
        usable = _KERNEL_DTYPES.get(value.dtype)
        if usable is None:
            usable = _KERNEL_DTYPES[value.dtype] = kl.from_numpy(value.dtype) is not None
        if not usable:
            raise LaunchError(f"{kernel}(): argument '{name}' has dtype {value.dtype}, which "
                              "kernels cannot use (use float32, float16, int32, uint32, int8, "
                              "uint8, int16, uint16 or bool)")
        return
    if isinstance(value, (bool, np.bool_, int, np.integer, float, np.floating)):
        return
    if value is None:
        raise LaunchError(f"{kernel}(): argument '{name}' is None; pass a tensor or a number "
                          "(or make the parameter a kl.constexpr)")
    raise LaunchError(f"{kernel}(): argument '{name}' has type {type(value).__name__}; "
                      "kernels take kdsl tensors, numpy arrays, ints and floats")


def jit(fn=None, *, interpret=None):
    """Decorator: compile a Python function as a kdsl kernel.

    `interpret=True` (or KDSL_INTERPRET=1) runs it on the numpy interpreter.
    """
    if fn is None:
        return lambda f: JITFunction(f, interpret=interpret)
    return JITFunction(fn, interpret=interpret)
