"""Invariances of xScore, its parts and the k-dataset estimate on random tables (hypothesis), and checks against
numpy / scipy where they have the same quantity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zoo.xscore import (
    average_ranks,
    compute_xscore,
    generalisation_and_variance,
    kendalls_w,
    normalise_columns,
    rank_stability,
    rank_table,
    spearman_rho,
    subset_estimate,
    xscore_values,
)

# Integer accuracies keep ties exact under the affine maps below.
tables = st.integers(1, 6).flatmap(
    lambda m: st.integers(1, 6).flatmap(
        lambda d: st.lists(st.lists(st.integers(0, 20), min_size=d, max_size=d), min_size=m, max_size=m)
    )
).map(lambda rows: np.array(rows, dtype=float))

FAST = settings(max_examples=40, deadline=None)


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flat columns warn; the properties hold all the same
        return fn(*a, **k)


@FAST
@given(tables, st.lists(st.integers(1, 50), min_size=6, max_size=6), st.integers(-30, 30))
def test_xscore_invariant_to_increasing_affine_maps_per_dataset(table, alphas, beta) -> None:
    base = _quiet(xscore_values, table)
    alpha = np.array(alphas[: table.shape[1]], dtype=float)
    assert _quiet(xscore_values, alpha * table + beta) == pytest.approx(base, abs=1e-12)
    assert _quiet(xscore_values, table / 100.0) == pytest.approx(base, abs=1e-12)  # percent vs fraction


@FAST
@given(tables, st.randoms(use_true_random=False))
def test_xscore_ignores_dataset_order_and_follows_model_order(table, rnd) -> None:
    cols = list(range(table.shape[1]))
    rows = list(range(table.shape[0]))
    rnd.shuffle(cols)
    rnd.shuffle(rows)
    base = _quiet(xscore_values, table)
    assert _quiet(xscore_values, table[:, cols]) == pytest.approx(base, abs=1e-12)
    assert _quiet(xscore_values, table[rows]) == pytest.approx(base[rows], abs=1e-12)


@FAST
@given(tables, st.floats(0.0, 4.0))
def test_ranges_and_the_formula(table, lam) -> None:
    norm = _quiet(normalise_columns, table)
    assert np.all((norm >= 0) & (norm <= 1))
    g, v = _quiet(generalisation_and_variance, table)
    assert np.allclose(g, norm.mean(axis=1))
    if table.shape[1] > 1:
        assert np.allclose(v, np.var(norm, axis=1, ddof=1))
    assert np.all((g >= -1e-12) & (g <= 1 + 1e-12)) and np.all(v >= 0)
    assert _quiet(xscore_values, table, lam) == pytest.approx(g - lam * v, abs=1e-12)
    m = table.shape[0]
    ranks = rank_table(table)
    assert np.allclose(ranks.sum(axis=0), m * (m + 1) / 2)  # averaged ties keep the rank sum
    stab = rank_stability(ranks)
    assert np.all((stab >= 0) & (stab <= 1))
    w = kendalls_w(table)
    assert np.isnan(w) or -1e-12 <= w <= 1 + 1e-12


@FAST
@given(tables)
def test_a_model_best_everywhere_gets_exactly_one_and_first_place(table) -> None:
    top = np.vstack([table.max(axis=0, keepdims=True) + 1, table])
    rep = _quiet(compute_xscore, top)
    assert rep.scores[0].model == "model0" and rep.scores[0].xscore == 1.0
    assert (rep.scores[0].generalisation, rep.scores[0].variance) == (1.0, 0.0)


@FAST
@given(st.integers(6, 9), st.integers(2, 5), st.integers(0, 2**31 - 1), st.floats(0.5, 100.0))
def test_subset_estimate_r2_in_unit_range_and_invariant_to_units(m, d, seed, scale) -> None:
    acc = np.random.default_rng(seed).uniform(0.2, 0.95, size=(m, d))
    k = min(2, d)
    est = _quiet(subset_estimate, acc, k=k)
    scaled = _quiet(subset_estimate, acc * scale + 1.0, k=k)
    assert all(-1e-9 <= p.best_r2 <= 1 + 1e-9 for p in est.curve)
    assert scaled.fit.r2 == pytest.approx(est.fit.r2, abs=1e-9)  # units change the coefficients, not the fit
    assert scaled.estimated == pytest.approx(est.estimated, abs=1e-9)
    assert est.curve[-1].best_r2 >= max(p.best_r2 for p in est.curve) - 1e-12  # more regressors never fit worse


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
