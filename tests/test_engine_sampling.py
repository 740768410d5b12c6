"""Sampling against transformers' logits processors, and the memory plan's invariants."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from engine.plan import Plan, S, R, Use, _place
from engine.sampling import (SamplingParams, Sampler, apply_repetition_penalty,
                             filtered_probabilities)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

logits_rows = st.integers(1, 60).flatmap(
    lambda n: st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=n, max_size=n))


@given(logits_rows, st.integers(0, 70), st.floats(0.05, 1.0))
def test_top_k_top_p_support_equals_transformers(row, top_k, top_p):
    logits = np.array(row, np.float64)
    # ties at the cut make the kept set depend on sort order: skip those
    ordered = np.sort(logits)[::-1]
    if top_k and top_k < len(ordered) and ordered[top_k - 1] == ordered[top_k]:
        return
    if len(np.unique(logits)) < len(logits):
        return
    probs = filtered_probabilities(logits, top_k, top_p)
    scores = torch.tensor(logits[None], dtype=torch.float64)
    if top_k:
        scores = transformers.TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = transformers.TopPLogitsWarper(top_p)(None, scores)
    want = torch.softmax(scores, dim=-1)[0].numpy()
    np.testing.assert_allclose(probs, want, atol=1e-9)


@given(logits_rows, st.lists(st.integers(0, 59), max_size=10), st.floats(0.5, 3.0))
def test_repetition_penalty_equals_transformers(row, history, penalty):
    logits = np.array(row, np.float64)
    history = [h for h in history if h < len(logits)]
    if not history:
        return
    ref = transformers.RepetitionPenaltyLogitsProcessor(penalty)(
        torch.tensor([history]), torch.tensor(logits[None]))[0].numpy()
    np.testing.assert_allclose(apply_repetition_penalty(logits, history, penalty), ref)


def test_greedy_and_seeded_sampling():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(1000)
    assert Sampler(SamplingParams()).pick(logits, []) == int(np.argmax(logits))
    assert Sampler(SamplingParams(temperature=1.0, top_k=1)).pick(logits, []) == int(np.argmax(logits))
    draw = [Sampler(SamplingParams(temperature=1.0, seed=7)).pick(logits, []) for _ in range(3)]
    assert len(set(draw)) == 1
    many = Sampler(SamplingParams(temperature=1.0, top_k=5, seed=1))
    picks = {many.pick(logits, []) for _ in range(200)}
    assert picks == set(np.argsort(-logits)[:5].tolist())


def test_sampling_frequencies_follow_softmax():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    sampler = Sampler(SamplingParams(temperature=1.0, seed=3))
    counts = np.bincount([sampler.pick(logits, []) for _ in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(counts, [0.6, 0.3, 0.1], atol=0.03)


@pytest.mark.parametrize("bad, match", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(top_k=-2), "top_k"),
    (dict(repetition_penalty=0), "repetition_penalty")])
def test_bad_sampling_params(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**bad)


# ---------------------------------------------------------------- the plan

@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 9), st.integers(0, 9)),
                min_size=1, max_size=12))
def test_placement_never_overlaps_live_buffers(specs):
    sizes = {f"b{i}": size for i, (size, _, _) in enumerate(specs)}
    lifetimes = {f"b{i}": (min(a, b), max(a, b)) for i, (_, a, b) in enumerate(specs)}
    offsets = _place(sizes, lifetimes)
    names = list(sizes)
    for i, a in enumerate(names):
        assert offsets[a] >= 0
        for b in names[i + 1:]:
            live_together = lifetimes[a][0] <= lifetimes[b][1] and lifetimes[b][0] <= lifetimes[a][1]
            apart = (offsets[a] + sizes[a] <= offsets[b]) or (offsets[b] + sizes[b] <= offsets[a])
            assert apart or not live_together


def test_plan_shares_dead_buffers_and_evaluates_shapes():
    buffers = {"x": (S, 8), "a": (S, 32), "b": (S, 32), "logits": (R, 10)}
    uses = [Use("one", ["x"], ["a"]), Use("two", ["a"], ["x"]), Use("three", ["x"], ["b"]),
            Use("four", ["b"], ["logits"])]
    plan = Plan(buffers, uses, max_tokens=4, pinned=["x"])
    assert plan.offsets["a"] == plan.offsets["b"]          # a is dead when b is born
    assert plan.nbytes < plan.unshared_nbytes
    views = plan.views(S=3, R=1)
    assert views["a"].shape == (3, 32) and views["logits"].shape == (1, 10)
    assert plan.views(S=3, R=1) is views                   # made once per shape
    with pytest.raises(ValueError, match="1..4"):
        plan.views(S=5, R=1)
    with pytest.raises(ValueError, match="undeclared"):
        Plan(buffers, [Use("bad", ["nope"], [])], max_tokens=4)
