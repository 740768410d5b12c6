"""Replaying a step's launches without re-running the library wrappers.

A decode step (one token), or a prefill chunk that returns one row's logits,
calls the same wrappers on the same tensors every time, except where the
past length enters (RoPE's position, the KV-cache slot, attention's key
count). Each sub-step is recorded once, as the kernel launches its wrappers
made, and turned into prepared launches (`kernel.prepare`), which enqueue
with one driver call and no argument work; the sub-steps that move with the
past length (AffineStep) get those arguments set per step. On PoCL a launch
through a wrapper costs tens of microseconds of Python; a decode step of a
30-layer model makes hundreds.
"""
import contextlib


@contextlib.contextmanager
def captured_launches():
    """Collect (jit_fn, grid, values, num_threads) of every kdsl launch in the block.

    The launches still run; the list is filled when the block ends.
    """
    import kdsl
    records = []
    with kdsl.capture_launches() as launches:
        try:
            yield records
        finally:
            records.extend((r.jit_fn, r.grid, r.values, r.num_threads) for r in launches)


def _differences(old, new):
    """Per launch, the arguments that changed between two recordings as (name, old, new);
    None when the launches differ in more than runtime ints and tensor offsets."""
    import kdsl
    if len(old) != len(new):
        return None
    changes = []
    for (fn_a, grid_a, values_a, threads_a), (fn_b, grid_b, values_b, threads_b) in zip(old, new):
        if fn_a is not fn_b or grid_a != grid_b or threads_a != threads_b:
            return None
        changed = []
        for name, a in values_a.items():
            b = values_b[name]
            if isinstance(a, kdsl.Tensor):
                if not isinstance(b, kdsl.Tensor) or a.buffer is not b.buffer:
                    return None
                if a.offset != b.offset:
                    changed.append((name, a, b))
            elif type(a) is not type(b) or (name in fn_a.constexpr_names and a != b):
                return None
            elif a != b:
                if not isinstance(a, int):
                    return None
                changed.append((name, a, b))
        changes.append(changed)
    return changes


def _shifted(value, per_token, tokens):
    """An int or a tensor's offset moved by `per_token` for each of `tokens` tokens."""
    import kdsl
    if isinstance(value, kdsl.Tensor):
        return kdsl.Tensor(value.buffer, value.shape, value.dtype, value.device,
                           value.offset + per_token * tokens, value.strides)
    return value + per_token * tokens


class AffineStep:
    """A step whose launches change with the past length P only through ints and tensor
    offsets that move by a fixed amount per token (RoPE's position, the KV-cache slot,
    attention's key count).

    The step runs `unit` new tokens (1 for decode, the chunk for prefill), so
    it is seen at P, P + unit, P + 2 unit, ... Two eager steps give each
    changing argument's change per token; a third must equal the prediction,
    else the step stays eager for good. From then on it is replayed with
    prepared launches whose changing arguments are set per step, at any P.
    """

    def __init__(self, unit=1):
        self.unit = unit
        self.seen = []                # (past, records) of the eager steps so far
        self.launches = None          # prepared launches, once verified
        self.eager = False

    def run(self, past, step):
        if self.launches is not None:
            base_past, changes = self.base
            for launch, changed in zip(self.launches, changes):
                for name, a, per_token in changed:
                    launch.advance(name, _shifted(a, per_token, past - base_past))
                launch()
            return
        with captured_launches() as records:
            step()
        if self.eager:
            return
        if self.seen and self.seen[-1][0] != past - self.unit:
            self.seen = []            # not consecutive steps (a new prompt): start again
        self.seen.append((past, records))
        if len(self.seen) == 3:
            self._verify()

    def _verify(self):
        (p0, first), (_, second), (_, third) = self.seen
        changes = _per_token(_differences(first, second), self.unit)
        later = _per_token(_differences(first, third), 2 * self.unit)
        if changes is None or later is None or changes != later:
            self.eager = True
            return
        self.base = (p0, changes)
        self.launches = [jit_fn.prepare(grid, **values, num_threads=num_threads)
                         for jit_fn, grid, values, num_threads in first]


def _per_token(changes, tokens):
    """Per launch, (name, first value, change per token) of each changing argument;
    None where a change is not a whole number per token."""
    if changes is None:
        return None
    out = []
    for changed in changes:
        rows = []
        for name, a, b in changed:
            delta = _step_of(a, b)
            if delta % tokens:
                return None
            rows.append((name, a, delta // tokens))
        out.append(rows)
    return out


def _step_of(a, b):
    import kdsl
    return b.offset - a.offset if isinstance(a, kdsl.Tensor) else b - a


class StepGraph:
    """Per step key, the prepared launches that replay it; filled by `record`.

    >>> graph = StepGraph()
    >>> graph.run(("layer", 0, "qkv"), lambda: model._qkv(views))   # records (and runs)
    >>> graph.run(("layer", 0, "qkv"), lambda: model._qkv(views))   # replays

    A whole step (every sub-step of a forward, in order) is also kept as one
    flat list once all its sub-steps replay: `trace()` around a forward
    notes the sub-steps it runs, `replay(key, past)` runs the list in one
    loop. On a 2-core CPU the host's Python per step competes with the
    device's worker threads for the cores; walking the model's layers and
    sub-steps cost more than the launches themselves.
    """

    def __init__(self):
        self.prepared = {}
        self.affine = {}
        self.flat = {}                # step key -> [(launch, changes, base past)]
        self._trace = None

    def run_affine(self, key, step, past, unit=1):
        """Run a step of `unit` new tokens whose launches move with the past length
        (see AffineStep)."""
        if key not in self.affine:
            self.affine[key] = AffineStep(unit)
        self.affine[key].run(past, step)
        if self._trace is not None:
            self._trace.append(self.affine[key])

    def run(self, key, step):
        launches = self.prepared.get(key)
        if launches is None:
            with captured_launches() as records:
                step()
            launches = self.prepared[key] = [
                jit_fn.prepare(grid, **values, num_threads=num_threads)
                for jit_fn, grid, values, num_threads in records]
        else:
            for launch in launches:
                launch()
        if self._trace is not None:
            self._trace.append(launches)

    @contextlib.contextmanager
    def trace(self, key):
        """Note the sub-steps run in the block; where every one of them replays
        (no AffineStep still recording or gone eager), keep them as the flat
        step `key`."""
        self._trace = []
        try:
            yield
            flat = []
            for part in self._trace:
                if isinstance(part, AffineStep):
                    if part.launches is None:
                        return
                    base_past, changes = part.base
                    flat += [(launch, changed, base_past)
                             for launch, changed in zip(part.launches, changes)]
                else:
                    flat += [(launch, (), 0) for launch in part]
            self.flat[key] = flat
        finally:
            self._trace = None

    def replay(self, key, past):
        """Run the flat step `key` at this past length; False where there is none yet."""
        flat = self.flat.get(key)
        if flat is None:
            return False
        for launch, changed, base_past in flat:
            for name, a, per_token in changed:
                launch.advance(name, _shifted(a, per_token, past - base_past))
            launch()
        return True

    @property
    def n_launches(self):
        return sum(len(launches) for launches in self.prepared.values())
