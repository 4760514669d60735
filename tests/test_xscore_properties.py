"""Invariances of xScore and its parts, checked on random tables (hypothesis) and against scipy where it has one."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.xscore import (
    average_ranks,
    compute_xscore,
    kendalls_w,
    rank_stability,
    rank_table,
    spearman_rho,
    xscore_values,
)

# Integer accuracies keep ties exact under the affine maps below.
tables = st.integers(1, 6).flatmap(
    lambda m: st.integers(1, 6).flatmap(
        lambda d: st.lists(st.lists(st.integers(0, 20), min_size=d, max_size=d), min_size=m, max_size=m)
    )
).map(lambda rows: np.array(rows, dtype=float))

FAST = settings(max_examples=40, deadline=None)


@FAST
@given(tables, st.integers(1, 50), st.integers(-30, 30))
def test_xscore_invariant_to_increasing_affine_maps(table, alpha, beta) -> None:
    base = xscore_values(table)
    assert xscore_values(alpha * table + beta) == pytest.approx(base, abs=1e-12)
    assert xscore_values(table / 100.0) == pytest.approx(base, abs=1e-12)  # percent vs fraction


@FAST
@given(tables, st.randoms(use_true_random=False))
def test_xscore_ignores_dataset_order_and_follows_model_order(table, rnd) -> None:
    cols = list(range(table.shape[1]))
    rows = list(range(table.shape[0]))
    rnd.shuffle(cols)
    rnd.shuffle(rows)
    base = xscore_values(table)
    assert xscore_values(table[:, cols]) == pytest.approx(base, abs=1e-12)
    assert xscore_values(table[rows]) == pytest.approx(base[rows], abs=1e-12)


@FAST
@given(tables, st.floats(0.0, 1.0))
def test_ranges_and_rank_sums(table, weight) -> None:
    m = table.shape[0]
    ranks = rank_table(table)
    assert np.allclose(ranks.sum(axis=0), m * (m + 1) / 2)  # averaged ties keep the rank sum
    assert np.all((ranks >= 1) & (ranks <= m))
    stab = rank_stability(ranks)
    assert np.all((stab >= 0) & (stab <= 1))
    x = xscore_values(table, weight)
    assert np.all((x >= -1e-12) & (x <= 1 + 1e-12))
    w = kendalls_w(table)
    assert np.isnan(w) or -1e-12 <= w <= 1 + 1e-12


@FAST
@given(tables)
def test_a_model_best_everywhere_gets_exactly_one_and_first_place(table) -> None:
    top = np.vstack([table.max(axis=0, keepdims=True) + 1, table])
    rep = compute_xscore(top)
    assert rep.scores[0].model == "model0" and rep.scores[0].xscore == 1.0


@FAST
@given(st.integers(2, 6), st.integers(2, 6), st.randoms(use_true_random=False))
def test_kendalls_w_matches_mean_pairwise_spearman_without_ties(m, d, rnd) -> None:
    # Without ties, the mean Spearman ρ over all dataset pairs equals (D·W - 1) / (D - 1).
    table = np.array([rnd.sample(range(m), m) for _ in range(d)], dtype=float).T
    w = kendalls_w(table)
    rhos = [spearman_rho(table[:, i], table[:, j]) for i in range(d) for j in range(i + 1, d)]
    assert np.mean(rhos) == pytest.approx((d * w - 1) / (d - 1))


@FAST
@given(st.integers(2, 6), st.integers(1, 7))
def test_half_first_half_last_is_maximally_unstable(m, d) -> None:
    # model 0 first on ⌊D/2⌋ datasets and last on the others; the rest keep their order
    table = np.tile(np.arange(m, 0, -1, dtype=float)[:, None], (1, d))
    table[0, d // 2 :] = 0.0
    expected = 0.0 if d > 1 else 1.0
    assert rank_stability(rank_table(table))[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@FAST
@given(st.lists(st.integers(0, 5), min_size=2, max_size=12))
def test_average_ranks_and_spearman_match_scipy(values) -> None:
    stats = pytest.importorskip("scipy.stats")
    v = np.array(values, dtype=float)
    assert average_ranks(v).tolist() == pytest.approx(stats.rankdata(-v, method="average").tolist())
    other = v[::-1] + np.arange(len(v)) % 3
    ours, ref = spearman_rho(v, other), stats.spearmanr(v, other).statistic
    assert (np.isnan(ours) and np.isnan(ref)) or ours == pytest.approx(ref)
