"""Prepared launches: bind a kernel's arguments once, enqueue it many times.

An ordinary launch `kernel[grid](...)` binds and checks its arguments,
works out the specialisation key and sets every OpenCL argument: about
50-100 us of Python per launch, which is most of a decode step for a small
model (hundreds of small kernels per token). A prepared launch does that
work once and keeps its own `cl.Kernel` object, so enqueueing it again costs
one driver call; only the arguments that change between steps (a past
length, a position) are set again with `set(...)`.

    step = kernel.prepare((n_blocks,), x, out, n, BLOCK=256)
    for _ in range(100):
        step()                      # enqueue, no argument work
    step.set(n=n2)                  # a new scalar; a new specialisation recompiles
"""
import numpy as np
import pyopencl as cl

from .device import current_device
from .errors import LaunchError
from .launch import _spec_of, compile_kernel, set_offset
from .relaunch import same_scalar
from .tensor import Tensor


_UNSET = object()


class PreparedLaunch:
    """One kernel with its grid and arguments bound; call it to enqueue."""

    def __init__(self, jit_fn, grid, values, num_threads):
        self.jit_fn = jit_fn
        self.device = current_device()
        self.values = values
        self.num_threads_asked = num_threads
        for name in jit_fn.arg_names:
            v = values[name]
            if isinstance(v, np.ndarray) and name not in jit_fn.constexpr_names:
                raise LaunchError(f"{jit_fn.__name__}.prepare(): argument '{name}' is a numpy "
                                  "array; prepared launches take device tensors "
                                  "(kdsl.tensor(array)), which stay where the kernel writes them")
            if isinstance(v, Tensor) and v.device.fingerprint != self.device.fingerprint:
                raise LaunchError(f"{jit_fn.__name__}.prepare(): tensor '{name}' lives on "
                                  f"{v.device}, the kernel runs on {self.device}")
        # Per specialisation, the kernel object built for it: a position that
        # crosses a multiple of 16 switches back and forth between two. They are
        # found by the specialisation of the arguments set() has changed (the
        # others are as prepared), not by compile_kernel's key over every argument.
        self._built = {}
        self._by_spec = {}
        self._varying = []
        self._build()
        self.grid = grid

    def _build(self):
        spec = tuple(_spec_of(self.values[name], False) for name in self._varying)
        built = self._by_spec.get(spec)
        fresh = built is None
        if fresh:
            compiled = compile_kernel(self.jit_fn, self.values, self.num_threads_asked,
                                      self.device)
            built = self._built.get(id(compiled))
            if built is None:
                slot = {name: (index, setter) for name, index, setter in compiled.slots}
                # A kernel object of our own, so other launches of the same compiled
                # kernel cannot overwrite the arguments set here.
                built = self._built[id(compiled)] = (compiled, cl.Kernel(compiled.program,
                                                                         compiled.name), slot, {})
            self._by_spec[spec] = built
        self.compiled, self.cl_kernel, self._slot, self._set_values = built
        self.num_threads = self.compiled.num_threads
        # a kernel object switched back to keeps the arguments it had: set the
        # ones that changed since (a position, an offset), not all of them
        for name in (self._slot if fresh else self._varying):
            if name not in self._slot:
                continue
            value, old = self.values[name], self._set_values.get(name, _UNSET)
            if old is not value and not (type(old) is type(value) and type(value) is not Tensor
                                         and same_scalar(old, value)):
                self._set_one(name, value, None if old is _UNSET else old)

    @property
    def grid(self):
        return self._grid

    @grid.setter
    def grid(self, grid):
        grid = self.jit_fn.grid_of(grid, self.values)
        self._grid = grid
        self._global = (grid[0] * self.num_threads, grid[1], grid[2])
        self._local = (self.num_threads, 1, 1)

    def set(self, grid=None, **values):
        """Change runtime arguments (and the grid); returns self.

        A scalar whose new value changes the kernel's specialisation (1, a
        multiple of 16, ...) rebuilds the launch, as an ordinary launch would.
        """
        respecialise = False
        changed = []
        for name, value in values.items():
            if name not in self.values:
                raise LaunchError(f"{self.jit_fn.__name__}.set(): no argument '{name}'; its "
                                  f"parameters are {', '.join(self.jit_fn.arg_names)}")
            if name in self.jit_fn.constexpr_names:
                raise LaunchError(f"{self.jit_fn.__name__}.set(): '{name}' is a constexpr; "
                                  "prepare another launch for another value")
            old = self.values[name]
            if name not in self._varying:
                self._varying.append(name)
            if isinstance(value, Tensor) and isinstance(old, Tensor):
                # a tensor's specialisation is its dtype (no str() of it per step)
                respecialise |= value.dtype != old.dtype
            elif _spec_of(value, False) != _spec_of(old, False):
                respecialise = True
            self.values[name] = value
            changed.append((name, old))
        if respecialise:
            self._build()
        else:
            for name, old in changed:
                if name in self._slot:          # arguments the kernel never reads are not passed
                    self._set_one(name, self.values[name], old)
        if grid is not None:
            self.grid = grid
        return self

    def advance(self, name, value):
        """set(name=value) for the per-step change of a replayed step: a runtime int
        (a position, a key count) or a view of the same buffer at another offset.

        Skips set()'s checks (a decode step makes dozens of these); an int whose
        specialisation changes (1, multiples of 16) goes through set()."""
        old = self.values[name]
        if type(value) is int:
            if ((value == 1) != (old == 1) or (value % 16 == 0) != (old % 16 == 0)
                    or not -2**31 <= value < 2**31):
                return self.set(**{name: value})
        elif not (type(value) is Tensor and type(old) is Tensor and value.dtype == old.dtype
                  and value.buffer is old.buffer):
            return self.set(**{name: value})
        self.values[name] = value
        if name not in self._varying:          # a kernel object switched to later must get it
            self._varying.append(name)
        slot = self._slot.get(name)
        if slot is not None:                   # arguments the kernel never reads are not passed
            self._set_values[name] = value
            index, setter = slot
            if setter is None:
                set_offset(self.cl_kernel, index + 1, value.offset)
            else:
                setter(self.cl_kernel, index, value)
        return self

    def _set_one(self, name, value, old=None):
        index, setter = self._slot[name]
        self._set_values[name] = value
        if setter is None:
            if not isinstance(value, Tensor):
                raise LaunchError(f"{self.jit_fn.__name__}: argument '{name}' must be a device "
                                  f"tensor, got {type(value).__name__}")
            if not isinstance(old, Tensor) or old.buffer is not value.buffer:
                self.cl_kernel.set_arg(index, value.buffer)
            set_offset(self.cl_kernel, index + 1, value.offset)
        else:
            setter(self.cl_kernel, index, value)

    def __call__(self, queue=None):
        """Enqueue the kernel; returns its event (None for an empty grid)."""
        if 0 in self._global:
            return None
        return cl.enqueue_nd_range_kernel(queue or self.device.queue, self.cl_kernel,
                                          self._global, self._local)

    def __repr__(self):
        return f"<prepared launch of {self.jit_fn.__name__} grid={self._grid}>"
