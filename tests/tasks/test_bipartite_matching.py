"""Maximum bipartite matching: the size must equal scipy's exact answers on random
graphs, whatever the greedy seed leaves to augment."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from mtlcompress.tasks.bipartite_matching import maximum_matching
from mtlcompress.tasks.edge_matching import count_matched_pixels


def _check_matching(match: np.ndarray, adjacency: np.ndarray) -> int:
    """Asserts ``match`` is a one-to-one matching along edges; returns its size."""
    matched_rows = np.flatnonzero(match >= 0)
    assert adjacency[matched_rows, match[matched_rows]].all()
    assert len(np.unique(match[matched_rows])) == len(matched_rows)
    return len(matched_rows)


def _exact_sizes(adjacency: np.ndarray) -> tuple[int, int]:
    """Maximum matching size by scipy's Hopcroft-Karp and by the 0/1 assignment problem."""
    hopcroft_karp = int((maximum_bipartite_matching(csr_matrix(adjacency), perm_type="column") >= 0).sum())
    rows, cols = linear_sum_assignment(adjacency, maximize=True)
    return hopcroft_karp, int(adjacency[rows, cols].sum())


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_rows=st.integers(0, 14), n_cols=st.integers(0, 14),
       density=st.floats(0.0, 0.6), seeded=st.booleans())
def test_size_equals_scipy_on_random_graphs(seed: int, n_rows: int, n_cols: int, density: float, seeded: bool) -> None:
    rng = np.random.default_rng(seed)
    adjacency = rng.random((n_rows, n_cols)) < density
    rows, cols = np.nonzero(adjacency)
    # a random priority makes the greedy seed poor, so augmenting paths get exercised
    priority = rng.random(len(rows)) if seeded else None
    match = maximum_matching(rows, cols, n_rows, n_cols, priority=priority)
    assert len(match) == n_rows
    hopcroft_karp, assignment = _exact_sizes(adjacency)
    assert _check_matching(match, adjacency) == hopcroft_karp == assignment


def test_long_augmenting_path_through_a_bad_seed() -> None:
    # The chain r0-c0-r1-c1-...-r9-c9: the priority makes the greedy take every
    # r_{k+1}-c_k first, leaving r0 and c9 free; only the augmenting path through the
    # whole chain lifts the matching to its maximum, r_k-c_k.
    n = 10
    rows = np.concatenate([np.arange(n), np.arange(1, n)])
    cols = np.concatenate([np.arange(n), np.arange(n - 1)])
    priority = np.concatenate([np.ones(n), np.zeros(n - 1)])
    match = maximum_matching(rows, cols, n, n, priority=priority)
    assert match.tolist() == list(range(n))


def test_empty_and_edgeless_graphs() -> None:
    none = np.array([], dtype=np.int64)
    assert maximum_matching(none, none, 0, 5).tolist() == []
    assert maximum_matching(none, none, 3, 0).tolist() == [-1, -1, -1]
    assert maximum_matching(none, none, 3, 4).tolist() == [-1, -1, -1]


@pytest.mark.parametrize("seed", range(6))
def test_pixel_counts_equal_the_assignment_problem(seed: int) -> None:
    # Sparse random pixels within 2.5 px: many pixels compete, some have nobody.
    rng = np.random.default_rng(seed)
    predicted, truth = rng.random((2, 24, 24)) < rng.uniform(0.05, 0.3)
    max_dist = 2.5
    gaps = np.argwhere(predicted)[:, None, :] - np.argwhere(truth)[None, :, :]
    adjacency = np.hypot(gaps[..., 0], gaps[..., 1]) <= max_dist
    expected = _exact_sizes(adjacency)
    assert (count_matched_pixels(predicted, truth, max_dist),) * 2 == expected
    assert count_matched_pixels(truth, predicted, max_dist) == expected[0]
