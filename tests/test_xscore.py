"""xScore (G - λV of per-dataset min-max accuracies) and the k-dataset estimate, pinned on tables computed by hand
and on the paper's published accuracy table (values in the comments are the hand results)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from zoo.errors import ConfigError, DataError
from zoo.xscore import (
    compute_xscore,
    fit_subset,
    generalisation_and_variance,
    kendalls_w,
    max_rank_std,
    normalise_columns,
    rank_stability,
    rank_table,
    read_table_csv,
    spearman_rho,
    subset_estimate,
    table_from_records,
    xscore_values,
)

PAPER_TABLE = Path(__file__).parent / "data" / "xscore_paper_accuracy.csv"

# A best everywhere; B and C swap places 2/3 between d0 and d1, d2.
BEST = [[0.9, 0.8, 0.7], [0.8, 0.6, 0.5], [0.7, 0.7, 0.6]]


def test_columns_are_min_max_normalised_per_dataset() -> None:
    # d0: 0.7..0.9 -> A 1, B .5, C 0; d1: 0.6..0.8 -> 1, 0, .5; d2: 0.5..0.7 -> 1, 0, .5
    assert np.allclose(normalise_columns(BEST), [[1, 1, 1], [0.5, 0, 0], [0, 0.5, 0.5]])


def test_g_v_and_xscore_by_hand() -> None:
    g, v = generalisation_and_variance(BEST)
    # A: 1,1,1 -> G 1, V 0. B: .5,0,0 -> G 1/6, V = ((1/3)^2 + 2(1/6)^2) / 2 = 1/12. C: 0,.5,.5 -> G 1/3, V 1/12
    assert g.tolist() == pytest.approx([1.0, 1 / 6, 1 / 3])
    assert v.tolist() == pytest.approx([0.0, 1 / 12, 1 / 12])
    assert xscore_values(BEST).tolist() == pytest.approx([1.0, 1 / 6 - 1 / 24, 1 / 3 - 1 / 24])
    assert xscore_values(BEST, lam=2.0).tolist() == pytest.approx([1.0, 0.0, 1 / 6])  # λ configurable
    assert xscore_values(BEST, lam=0.0).tolist() == pytest.approx(g.tolist())
    rep = compute_xscore(BEST, ["A", "B", "C"], ["d0", "d1", "d2"])
    assert [s.model for s in rep.scores] == ["A", "C", "B"]
    c = rep.score("C")
    assert (c.generalisation, c.variance, c.xscore) == pytest.approx((1 / 3, 1 / 12, 7 / 24))
    assert c.normalised == pytest.approx({"d0": 0.0, "d1": 0.5, "d2": 0.5})


def test_variance_is_the_sample_variance() -> None:
    acc = [[10, 0], [0, 10]]  # each model best once, worst once: ã = (1, 0) and (0, 1)
    g, v = generalisation_and_variance(acc)
    assert g.tolist() == [0.5, 0.5] and v.tolist() == [0.5, 0.5]  # (0.25 + 0.25) / (2 - 1), not / 2
    assert xscore_values(acc).tolist() == [0.25, 0.25]


def test_a_stable_middling_model_beats_an_erratic_one_with_the_same_mean() -> None:
    # S is second everywhere; E is first on two datasets and last on two: same G = 0.5, V 0 vs 1/3
    acc = [[0.5, 0.5, 0.5, 0.5], [0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.9, 0.9]]
    rep = compute_xscore(acc, ["S", "E", "F"], list("abcd"))
    assert rep.score("S").generalisation == pytest.approx(rep.score("E").generalisation) == pytest.approx(0.5)
    assert rep.score("E").variance == pytest.approx(1 / 3)
    assert rep.scores[0].model == "S" and rep.score("E").xscore == pytest.approx(0.5 - 1 / 6)


def test_flat_dataset_is_one_for_all_with_a_warning_and_one_dataset_has_no_variance() -> None:
    with pytest.warns(UserWarning, match=r"same on \['flat'\]"):
        rep = compute_xscore([[0.5, 0.9], [0.5, 0.1]], ["A", "B"], ["flat", "d"])
    assert rep.normalised.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    single = compute_xscore([[0.9], [0.5], [0.7]], ["A", "B", "C"], ["only"])
    assert {s.model: s.xscore for s in single.scores} == pytest.approx({"A": 1.0, "B": 0.0, "C": 0.5})
    assert all(s.variance == 0.0 for s in single.scores)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one model: nothing to compare, and no warning about it
        solo = compute_xscore([[0.3, 0.9]], ["solo"], ["a", "b"])
    assert solo.scores[0].xscore == 1.0 and math.isnan(solo.kendalls_w)


def test_lambda_must_be_a_non_negative_number() -> None:
    with pytest.raises(ConfigError, match=">= 0"):
        xscore_values(BEST, lam=-0.1)
    with pytest.raises(ConfigError, match=">= 0"):
        compute_xscore(BEST, lam=float("nan"))


def test_extra_columns_ranks_stability_and_kendalls_w() -> None:
    rep = compute_xscore(BEST, ["A", "B", "C"], ["d0", "d1", "d2"])
    assert rank_table(BEST).tolist() == [[1, 1, 1], [2, 3, 3], [3, 2, 2]]
    assert max_rank_std(3, 3) == pytest.approx(2 * math.sqrt(2) / 3)
    # B: ranks 2,3,3 -> σ √2/3 over σ_max 2√2/3 -> stability 1/2
    assert rep.score("B").rank_stability == pytest.approx(0.5) and rep.score("A").rank_stability == 1.0
    assert rep.score("B").worst_accuracy == 0.5 and rep.score("B").worst_dataset == "d2"
    assert rep.score("C").mean_accuracy == pytest.approx(2 / 3) and rep.score("C").mean_rank == pytest.approx(7 / 3)
    # rank sums 3, 8, 7 around 6 -> S = 14; W = 12*14 / (9*(27-3)) = 7/9
    assert rep.kendalls_w == pytest.approx(7 / 9)
    # ties: d0 ties two models; T = 6 -> W = 78 / (4*24 - 2*6) = 13/14
    assert kendalls_w([[0.9, 0.9], [0.8, 0.8], [0.8, 0.7]]) == pytest.approx(13 / 14)
    assert rank_stability(np.array([[1, 1, 3], [2, 2, 2], [3, 3, 1]], float)).tolist() == pytest.approx([0, 1, 0])
    assert spearman_rho([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman_rho([1, 1, 1], [1, 2, 3]))


# ------------------------------------------------------------------------------------------ k-dataset estimate
def test_fit_subset_recovers_an_exact_linear_target_and_r2_by_hand() -> None:
    acc = np.array([[1.0, 5.0], [2.0, 3.0], [3.0, 4.0], [4.0, 1.0]])
    fit = fit_subset(acc, 0.5 + 2.0 * acc[:, 0], [0], ["a", "b"])
    assert (fit.datasets, fit.r2) == (("a",), pytest.approx(1.0))
    assert fit.coefficients == pytest.approx((2.0,)) and fit.intercept == pytest.approx(0.5)
    assert fit.predict({"a": 10.0}) == pytest.approx(20.5) and fit.predict([1.0]) == pytest.approx(2.5)
    # y = 0, 0, 1, 1 on x = 1, 2, 3, 4: slope 0.4, intercept -0.5, residuals .1 -.3 .3 -.1 -> R² = 1 - .2/1 = 0.8
    half = fit_subset(acc, [0, 0, 1, 1], [0])
    assert (half.coefficients[0], half.intercept, half.r2) == pytest.approx((0.4, -0.5, 0.8))
    assert math.isnan(fit_subset(acc, [1, 1, 1, 1], [0]).r2)  # a constant target has no R²
    with pytest.raises(DataError, match="missing"):
        fit.predict({"b": 1.0})


def test_subset_estimate_keeps_the_best_r2_subset_and_reports_the_ordering() -> None:
    rng = np.random.default_rng(0)
    acc = rng.uniform(50, 90, size=(8, 5))
    est = subset_estimate(acc, [f"m{i}" for i in range(8)], list("abcde"), k=2)
    x = xscore_values(acc)
    best = max((fit_subset(acc, x, s).r2, s) for s in [(i, j) for i in range(5) for j in range(i + 1, 5)])
    assert est.fit.r2 == pytest.approx(best[0]) and est.fit.datasets == tuple("abcde"[i] for i in best[1])
    assert (est.n_subsets, est.exhaustive, est.underdetermined) == (10, True, False)
    assert est.full == pytest.approx(dict(zip(est.models, x)))
    assert est.full_order == [f"m{i}" for i in np.argsort(-x)]
    assert [p.k for p in est.curve] == [1, 2, 3, 4, 5] and est.curve[1].best_r2 == pytest.approx(best[0])
    assert est.curve[-1].n_subsets == 1 and est.curve[0].best_r2 <= est.curve[1].best_r2 <= est.curve[2].best_r2
    moved = {m: (a, b) for m, a, b in est.moved()}
    assert all(est.estimated_order[b - 1] == m for m, (a, b) in moved.items())
    d = est.to_dict()
    assert d["datasets"] == list(est.fit.datasets) and d["r2"] == est.fit.r2 and len(d["curve"]) == 5


def test_subset_estimate_samples_warns_and_rejects_bad_k() -> None:
    rng = np.random.default_rng(1)
    acc = rng.uniform(0.3, 0.9, size=(9, 8))
    est = subset_estimate(acc, k=4, max_subsets=10, seed=3)
    assert (est.n_subsets, est.exhaustive) == (10, False)  # C(8,4) = 70 > 10
    assert est.to_dict() == subset_estimate(acc, k=4, max_subsets=10, seed=3).to_dict()  # seeded
    with pytest.warns(UserWarning, match="every subset fits"):
        assert subset_estimate(acc[:5], k=4, curve=False).underdetermined  # 5 models <= k + 1
    with pytest.raises(ConfigError, match="between 1 and the number of datasets"):
        subset_estimate(acc, k=9)


# ------------------------------------------------------------------------------------------ the paper's table
def test_paper_table_reproduces_the_published_xscores() -> None:
    table, models, datasets = read_table_csv(PAPER_TABLE)
    assert table.shape == (11, 7)
    assert datasets == ["Imagenette", "CIFAR10", "CIFAR100", "HAM10k", "Dogs", "Indoor67", "MiniPlaces"]
    rep = compute_xscore(table, models, datasets)
    ranking = [(s.model, round(s.xscore, 3)) for s in rep.scores]
    assert ranking == [("EfficientNet", 0.962), ("ConvMixer", 0.853), ("MobileViT", 0.796), ("MobileNet", 0.706),
                       ("StarNet", 0.681), ("FBNet", 0.639), ("ShuffleNet", 0.565), ("GhostNet", 0.521),
                       ("MobileOne", 0.504), ("TinyNet", 0.491), ("ConvNeXt", 0.070)]
    # the script's G and V columns, rounded as it prints them
    assert (round(rep.score("TinyNet").generalisation, 3), round(rep.score("TinyNet").variance, 3)) == (0.573, 0.163)
    assert (round(rep.score("ConvNeXt").generalisation, 3), round(rep.score("ConvNeXt").variance, 3)) == (0.102, 0.063)
    # percent or fraction: the same scores
    assert compute_xscore(table / 100, models, datasets).xscores() == pytest.approx(rep.xscores(), abs=1e-12)


def test_paper_table_best_four_datasets_and_their_fit() -> None:
    table, models, datasets = read_table_csv(PAPER_TABLE)
    est = subset_estimate(table, models, datasets, k=4)
    assert est.fit.datasets == ("CIFAR10", "HAM10k", "Dogs", "Indoor67")
    assert round(est.fit.r2, 3) == 0.990 and (est.n_subsets, est.exhaustive) == (35, True)
    assert est.fit.intercept == pytest.approx(-8.419, abs=1e-3)
    assert est.fit.coefficients == pytest.approx((0.07546, 0.01147, 0.00842, 0.01249), abs=1e-5)
    # the estimate keeps the top and bottom and swaps two neighbouring pairs
    assert est.estimated_order[0] in ("EfficientNet", "MobileViT") and est.estimated_order[-1] == "ConvNeXt"
    assert est.moved() == [("ConvMixer", 2, 3), ("MobileViT", 3, 2), ("MobileOne", 9, 10), ("TinyNet", 10, 9)]
    assert est.spearman_rho == pytest.approx(1 - 6 * 4 / (11 * 120))  # four positions off by one: Σd² = 4


# ------------------------------------------------------------------------------------------ tables
def test_bad_tables_are_clear_errors() -> None:
    with pytest.raises(DataError, match="2-D"):
        compute_xscore([0.1, 0.2])
    with pytest.raises(DataError, match="non-finite"):
        compute_xscore([[0.1, float("nan")]])
    with pytest.raises(DataError, match="duplicate model names"):
        compute_xscore([[0.1], [0.2]], ["a", "a"])
    with pytest.raises(DataError, match="1 dataset names for 2"):
        compute_xscore([[0.1, 0.2]], ["a"], ["x"])


def test_records_and_csv_tables(tmp_path: Path) -> None:
    rows = [
        {"model": "m1", "dataset": "a", "accuracy": "0.5"},
        {"model": "m2", "dataset": "a", "accuracy": "0.7"},
        {"model": "m1", "dataset": "b", "accuracy": "0.6"},
        {"model": "m2", "dataset": "b", "accuracy": "0.4"},
        {"model": "m1", "dataset": "a", "accuracy": "0.55"},  # re-run cell: last wins
    ]
    table, models, datasets = table_from_records(rows)
    assert (table.tolist(), models, datasets) == ([[0.55, 0.6], [0.7, 0.4]], ["m1", "m2"], ["a", "b"])
    with pytest.raises(DataError, match=r"no accuracy for \(m2, b\)"):
        table_from_records(rows[:3])
    long_csv = tmp_path / "long.csv"
    long_csv.write_text("model,dataset,accuracy,seconds\nm1,a,0.5,3\nm1,b,0.6,4\n")
    assert read_table_csv(long_csv)[0].tolist() == [[0.5, 0.6]]
    wide_csv = tmp_path / "wide.csv"
    wide_csv.write_text("# source: a paper\nmodel,cifar10,flowers\nx,91.0,80.5\ny,90.0,82.0\n")
    table, models, datasets = read_table_csv(wide_csv)
    assert (table.tolist(), models, datasets) == ([[91.0, 80.5], [90.0, 82.0]], ["x", "y"], ["cifar10", "flowers"])
    bad = tmp_path / "bad.csv"
    bad.write_text("name,score\nx,1\n")
    with pytest.raises(DataError, match="expected columns"):
        read_table_csv(bad)


def test_report_dict_and_text() -> None:
    rep = compute_xscore(BEST, ["A", "B", "C"], ["d0", "d1", "d2"])
    d = rep.to_dict()
    assert [r["model"] for r in d["ranking"]] == ["A", "C", "B"] and d["lambda"] == 0.5
    assert d["ranks"][1] == [2.0, 3.0, 3.0] and d["kendalls_w"] == pytest.approx(7 / 9)
    assert d["ranking"][1]["generalisation"] == pytest.approx(1 / 3)
    text = rep.format({"params": {"A": "1.2M"}})
    assert text.splitlines()[2].split()[:6] == ["1", "A", "1.000", "1.000", "0.000", "1.2M"]
    assert "G - 0.5·V" in text and "Kendall's W" in text
