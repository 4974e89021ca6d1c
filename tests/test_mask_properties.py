"""Property tests of mask selection: exact counts at every scope, ties by flat index, fixed
weights kept, refusals exactly where the target rounds to every weight or breaks min_density."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wfexplore.params import AnalysedParameter, ParameterLayout
from wfexplore.pruning import select_pruned


@st.composite
def problems(draw):
    sizes = draw(st.lists(st.integers(1, 25), min_size=1, max_size=5))
    d = sum(sizes)
    scores = draw(st.lists(st.integers(0, 4), min_size=d, max_size=d))  # many ties
    fixed = draw(st.lists(st.booleans(), min_size=d, max_size=d))
    sparsity = draw(st.floats(0, 1, exclude_max=True, allow_nan=False))
    min_density = draw(st.sampled_from([0.0, 0.0, 0.1, 0.3]))
    return (
        sizes,
        torch.tensor(scores, dtype=torch.float64),
        torch.tensor(fixed),
        sparsity,
        min_density,
    )


EVERY_WEIGHT = (
    [3, 2],
    torch.zeros(5, dtype=torch.float64),
    torch.zeros(5, dtype=torch.bool),
    0.9,
    0.0,
)
NOTHING = (
    [3, 2],
    torch.ones(5, dtype=torch.float64),
    torch.tensor([1, 0, 0, 0, 0]).bool(),
    0.05,
    0.0,
)


def layout_of(sizes) -> ParameterLayout:
    params, offset = [], 0
    for i, n in enumerate(sizes):
        params.append(AnalysedParameter(f"l{i}.weight", f"l{i}", "Linear", (n,), offset))
        offset += n
    return ParameterLayout(params, "layer")


def order(indices, scores, fixed):
    """Fixed weights first, then lowest score, ties by flat index."""
    return sorted(indices, key=lambda i: (not bool(fixed[i]), float(scores[i]), i))


def select(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return select_pruned(*args, **kwargs)


@settings(max_examples=100, deadline=None)
@given(problems())
@example(EVERY_WEIGHT)
@example(NOTHING)
def test_global_selection_is_the_first_count_weights_in_score_order(problem):
    sizes, scores, fixed, sparsity, min_density = problem
    layout, d = layout_of(sizes), sum(sizes)
    count = round(sparsity * d)
    starts = [p.offset for p in layout.parameters]
    layer = [next(i for i in reversed(range(len(sizes))) if starts[i] <= j) for j in range(d)]
    fixed_in = [sum(bool(fixed[j]) for j in range(d) if layer[j] == i) for i in range(len(sizes))]
    caps = [max(n - math.ceil(min_density * n), f) for n, f in zip(sizes, fixed_in, strict=True)]
    if count >= d or count > sum(caps):
        with pytest.raises(ValueError, match="sparsity"):
            select(scores, layout, sparsity, scope="global", min_density=min_density, fixed=fixed)
        return
    pruned = select(scores, layout, sparsity, scope="global", min_density=min_density, fixed=fixed)
    expected, taken = set(), [0] * len(sizes)
    for j in order(range(d), scores, fixed):  # greedy: no layer past its cap
        if len(expected) == max(count, int(fixed.sum())):
            break
        if taken[layer[j]] < caps[layer[j]]:
            expected.add(j)
            taken[layer[j]] += 1
    assert set(pruned.nonzero()[:, 0].tolist()) == expected
    assert int(pruned.sum()) == max(count, int(fixed.sum()))
    assert bool(pruned[fixed].all())


@settings(max_examples=100, deadline=None)
@given(problems())
@example(EVERY_WEIGHT)
@example(NOTHING)
def test_layerwise_selection_is_exact_in_every_layer(problem):
    sizes, scores, fixed, sparsity, min_density = problem
    layout = layout_of(sizes)
    refused = False
    for p in layout.parameters:
        count = round(sparsity * p.numel)
        fixed_here = int(fixed[p.offset : p.stop].sum())
        cap = max(p.numel - math.ceil(min_density * p.numel), fixed_here)
        refused |= count >= p.numel or (count > cap and count > 0)
    if refused:
        with pytest.raises(ValueError, match="sparsity|min_density"):
            select(
                scores, layout, sparsity, scope="layerwise", min_density=min_density, fixed=fixed
            )
        return
    pruned = select(
        scores, layout, sparsity, scope="layerwise", min_density=min_density, fixed=fixed
    )
    assert bool(pruned[fixed].all())
    for p in layout.parameters:
        count = max(round(sparsity * p.numel), int(fixed[p.offset : p.stop].sum()))
        expected = set(order(range(p.offset, p.stop), scores, fixed)[:count])
        part = pruned[p.offset : p.stop]
        assert int(part.sum()) == count
        assert {p.offset + i for i in part.nonzero()[:, 0].tolist()} == expected


@settings(max_examples=40, deadline=None)
@given(problems())
def test_selection_depends_only_on_the_order_of_the_scores(problem):
    sizes, scores, fixed, sparsity, _ = problem
    layout = layout_of(sizes)
    if round(sparsity * sum(sizes)) >= sum(sizes):
        return
    relabelled = torch.exp(scores) * 10 + 3  # increasing: same order, same ties
    a = select(scores, layout, sparsity, scope="global", fixed=fixed)
    b = select(relabelled, layout, sparsity, scope="global", fixed=fixed)
    assert torch.equal(a, b)
