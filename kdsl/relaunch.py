"""A shortcut for relaunching a kernel the way it was last launched.

An ordinary launch binds and checks every argument, computes the
specialisation key over all of them and looks the compiled kernel up: about
20 us of Python per launch, and on a CPU device those microseconds are
taken from the cores the kernels run on (PoCL's 512^3 GEMM, two launches a
call, ran 5-15 % faster through prepared launches that skip this work).
Library code calls the same kernel again and again with new tensors of the
same dtypes and the same constexprs; a `Relaunch` remembers what the last
launch's arguments were *like* (dtypes, the int specialisation, the
constexprs and keywords) and, when the next call's arguments are alike,
enqueues the kernel built for it without binding again. Anything unusual
(numpy arrays, a callable grid, a tensor by keyword, another device, numpy
scalars) takes the ordinary path, which records a new shortcut.
"""
import math

from . import language as kl
from .device import current_device
from .tensor import Tensor

_SCALAR_TYPES = (int, float, bool)
# keyword arguments (constexprs, num_threads) compared with ==
_KEYWORD_TYPES = frozenset({int, float, bool, str, type(None), kl.dtype})


def same_scalar(a, b):
    """a == b, except that -0.0 and 0.0 differ (as their reprs in the
    specialisation key do, and as 1 / x tells them apart)."""
    return a == b and (type(a) is not float or math.copysign(1.0, a) == math.copysign(1.0, b))


def int_spec(value):
    """The part of the specialisation key an int argument contributes (launch._spec_of)."""
    return ("i", value == 1, value % 16 == 0, -2**31 <= value < 2**31)


class Relaunch:
    """How one kernel was last launched, and enqueueing it again for alike arguments."""

    def __init__(self, jit_fn, compiled, device, args, kwargs, values, num_threads=None):
        self.num_threads = num_threads      # as bind() gave it (True -> 1)
        self.compiled = compiled
        self.device = device
        self.names = jit_fn.arg_names[:len(args)]
        constexprs = set(jit_fn.constexpr_names)
        # per positional argument, what a later one must be like: a tensor's
        # dtype, an int's specialisation, a float or bool, a constexpr's value
        self.specs = []
        for name, value in zip(self.names, args):
            if name in constexprs:
                self.specs.append(("c", type(value), value))
            elif type(value) is Tensor:
                self.specs.append(("t", value.dtype))
            elif type(value) is int:
                self.specs.append(int_spec(value))
            else:
                self.specs.append(("b",) if type(value) is bool else ("f",))
        # keywords compared with their types: 1, 1.0 and True are equal but
        # specialise differently
        self.kwargs = dict(kwargs)
        # the values of parameters not given by position (keywords, defaults)
        self.rest = {k: v for k, v in values.items() if k not in self.names}

    @staticmethod
    def eligible(args, kwargs):
        """Whether a launch's arguments are of the kinds `alike` can compare."""
        return (all(type(v) is Tensor or type(v) in _SCALAR_TYPES or type(v) is str
                    for v in args)
                and all(type(v) in _KEYWORD_TYPES for v in kwargs.values()))

    def alike(self, args, kwargs):
        """Whether a launch with these arguments runs the same compiled kernel."""
        if len(args) != len(self.specs) or len(kwargs) != len(self.kwargs):
            return False
        old = self.kwargs
        for k, v in kwargs.items():
            # the type first: a numpy array's == has no truth value
            if k not in old or type(v) is not type(old[k]) or not same_scalar(v, old[k]):
                return False
        device = self.device
        for value, spec in zip(args, self.specs):
            kind, t = type(value), spec[0]
            if t == "t":
                if kind is not Tensor or value.dtype != spec[1] or value.device is not device:
                    return False
            elif t == "i":
                if kind is not int or int_spec(value) != spec:
                    return False
            elif t == "c":
                if kind is not spec[1] or not same_scalar(value, spec[2]):
                    return False
            elif t == "f":
                if kind is not float:
                    return False
            elif kind is not bool:       # "b"
                return False
        return current_device() is device

    def values(self, args):
        """The launch's parameter values, as bind() would give them."""
        values = dict(self.rest)
        values.update(zip(self.names, args))
        return values
