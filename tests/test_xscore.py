"""xScore components pinned on small tables computed by hand (values in the comments are the hand results)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zoo.errors import ConfigError, DataError
from zoo.xscore import (
    average_ranks,
    compute_xscore,
    few_dataset_estimate,
    kendalls_w,
    max_rank_std,
    rank_stability,
    rank_table,
    read_table_csv,
    spearman_rho,
    table_from_records,
    xscore_values,
)

# A best everywhere; B and C swap places 2/3 between d0 and d1, d2.
BEST = [[0.9, 0.8, 0.7], [0.8, 0.6, 0.5], [0.7, 0.7, 0.6]]


def test_average_ranks_ties_share_mean_position() -> None:
    assert average_ranks([0.9, 0.8, 0.8]).tolist() == [1.0, 2.5, 2.5]
    assert average_ranks([0.5, 0.5, 0.5]).tolist() == [2.0, 2.0, 2.0]
    assert average_ranks([0.1, 0.7, 0.7, 0.7, 0.9]).tolist() == [5.0, 3.0, 3.0, 3.0, 1.0]
    assert average_ranks([3.0, 1.0, 2.0], higher_is_better=False).tolist() == [3.0, 1.0, 2.0]


def test_rank_table_is_per_dataset_column() -> None:
    assert rank_table(BEST).tolist() == [[1, 1, 1], [2, 3, 3], [3, 2, 2]]


def test_max_rank_std_hand_values() -> None:
    assert max_rank_std(3, 3) == pytest.approx(2 * math.sqrt(2) / 3)  # ranks {1, 3, 3}: std 2√2/3
    assert max_rank_std(4, 4) == pytest.approx(1.5)  # ranks {1, 1, 4, 4}
    assert max_rank_std(3, 2) == pytest.approx(1.0)
    assert max_rank_std(5, 1) == 0.0 and max_rank_std(1, 4) == 0.0


def test_model_best_everywhere_scores_one_and_the_rest_by_hand() -> None:
    rep = compute_xscore(BEST, ["A", "B", "C"], ["d0", "d1", "d2"])
    a, b, c = rep.score("A"), rep.score("B"), rep.score("C")
    # A: ranks 1,1,1 -> R 1; mean 0.8 is the max -> normalised 1; X = 1
    assert (a.xscore, a.rank_stability, a.normalised_mean_accuracy, a.position) == (1.0, 1.0, 1.0, 1)
    # B: ranks 2,3,3 -> σ √2/3, σ_max 2√2/3 -> R 1/2; mean 0.6333 is the min -> 0; X = 0.25
    assert b.rank_std == pytest.approx(math.sqrt(2) / 3)
    assert b.rank_stability == pytest.approx(0.5)
    assert b.xscore == pytest.approx(0.25)
    # C: ranks 3,2,2 -> R 1/2; mean 0.6667 -> (0.6667-0.6333)/(0.8-0.6333) = 0.2; X = 0.1 + 0.25 = 0.35
    assert c.normalised_mean_accuracy == pytest.approx(0.2)
    assert c.xscore == pytest.approx(0.35)
    assert [s.model for s in rep.scores] == ["A", "C", "B"]
    assert b.worst_accuracy == 0.5 and b.worst_dataset == "d2"
    assert c.mean_accuracy == pytest.approx(2.0 / 3) and c.mean_rank == pytest.approx(7 / 3)
    assert c.ranks == {"d0": 3.0, "d1": 2.0, "d2": 2.0}
    # rank sums 3, 8, 7, mean 6 -> S = 14; W = 12*14 / (9*(27-3)) = 7/9
    assert rep.kendalls_w == pytest.approx(7 / 9)


def test_ties_with_tie_corrected_kendalls_w() -> None:
    acc = [[0.9, 0.9], [0.8, 0.8], [0.8, 0.7]]  # d0 ties models 1 and 2
    assert rank_table(acc).tolist() == [[1, 1], [2.5, 2], [2.5, 3]]
    # rank sums 2, 4.5, 5.5 around 4 -> S = 6.5; T_d0 = 2^3 - 2 = 6 -> W = 78 / (4*24 - 2*6) = 13/14
    assert kendalls_w(acc) == pytest.approx(13 / 14)
    x = xscore_values(acc)
    # σ_max(3,2) = 1; stabilities 1, .75, .75; means .9, .8, .75 -> normalised 1, 1/3, 0
    assert x.tolist() == pytest.approx([1.0, 0.5 / 3 + 0.375, 0.375])


def test_rank_flip_between_two_models() -> None:
    rep = compute_xscore([[0.9, 0.6], [0.7, 0.8]], ["A", "B"], ["d0", "d1"])
    # each model is first once and last once: σ = 0.5 = σ_max(2,2) -> R = 0; equal means -> normalised 1 -> X = .5
    assert [s.rank_stability for s in rep.scores] == [0.0, 0.0]
    assert [s.xscore for s in rep.scores] == [0.5, 0.5]
    assert rep.kendalls_w == 0.0  # rank sums 3, 3: no agreement at all
    # exact tie on xScore and mean: the better worst-case (B: 0.7 > A: 0.6) goes first
    assert [s.model for s in rep.scores] == ["B", "A"]


def test_one_dataset() -> None:
    rep = compute_xscore([[0.9], [0.5], [0.7]], ["A", "B", "C"], ["only"])
    assert [s.rank_stability for s in rep.scores] == [1.0, 1.0, 1.0]  # nothing can vary
    assert {s.model: s.xscore for s in rep.scores} == pytest.approx({"A": 1.0, "B": 0.5, "C": 0.75})
    assert rep.kendalls_w == pytest.approx(1.0)  # one judge agrees with itself
    assert math.isnan(kendalls_w([[0.5], [0.5]]))  # ... unless it ties everything: undefined


def test_two_models_and_one_model() -> None:
    rep = compute_xscore([[0.6, 0.6, 0.9], [0.5, 0.7, 0.8]], ["A", "B"], list("xyz"))
    # ranks A: 1,2,1; B: 2,1,2; σ = √2/3, σ_max(2,3) = √2/3 -> R = 0 for both; means .7 vs .6667
    assert [s.rank_stability for s in rep.scores] == pytest.approx([0.0, 0.0])
    assert [(s.model, s.xscore) for s in rep.scores] == [("A", pytest.approx(0.5)), ("B", pytest.approx(0.0))]
    single = compute_xscore([[0.3, 0.9]], ["solo"], ["a", "b"])
    assert single.scores[0].xscore == 1.0 and math.isnan(single.kendalls_w)


def test_weight_moves_between_terms() -> None:
    assert xscore_values(BEST, weight=1.0).tolist() == pytest.approx([1.0, 0.0, 0.2])  # accuracy only
    assert xscore_values(BEST, weight=0.0).tolist() == pytest.approx([1.0, 0.5, 0.5])  # stability only
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        xscore_values(BEST, weight=1.5)


def test_stability_reaches_zero_for_odd_dataset_counts() -> None:
    ranks = np.array([[1, 1, 3], [2, 2, 2], [3, 3, 1]], dtype=float)
    assert rank_stability(ranks).tolist() == pytest.approx([0.0, 1.0, 0.0])


def test_spearman_rho_hand_values() -> None:
    assert spearman_rho([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ranks 1,2.5,2.5,4 vs 1..4: 4.5 / sqrt(4.5 * 5)
    assert spearman_rho([4, 3, 3, 1], [4, 3, 2, 1]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(spearman_rho([1, 1, 1], [1, 2, 3]))


def test_few_dataset_estimate_hand_computed() -> None:
    acc = [[0.9, 0.9, 0.1], [0.5, 0.5, 0.5], [0.1, 0.1, 0.9]]
    # full table: R = 0, 1, 0; normalised means 1, .5, 0 -> X = .5, .75, 0 (B > A > C)
    assert xscore_values(acc).tolist() == pytest.approx([0.5, 0.75, 0.0])
    est = few_dataset_estimate(acc, ["d0", "d1", "d2"], k=2)
    k1, k2, k3 = est.per_k
    # k=1: d0 or d1 order A>B>C -> ρ = 0.5; d2 order C>B>A -> ρ = -0.5
    assert (k1.best_rho, k1.best_subset, k1.n_subsets, k1.exhaustive) == (pytest.approx(0.5), ("d0",), 3, True)
    assert k1.mean_rho == pytest.approx(1 / 6) and k1.worst_rho == pytest.approx(-0.5)
    # k=2: {d0,d1} -> ρ 0.5; {d0,d2} and {d1,d2} -> X = .5, 1, .5 -> ρ = 1.5/√3
    assert est.best_subset == ("d0", "d2") and est.best_rho == pytest.approx(1.5 / math.sqrt(3))
    assert k2.worst_rho == pytest.approx(0.5)
    assert (k3.best_rho, k3.best_subset, k3.n_subsets) == (pytest.approx(1.0), ("d0", "d1", "d2"), 1)
    assert est.to_dict()["per_k"][1]["best_subset"] == ["d0", "d2"]


def test_few_dataset_estimate_samples_when_too_many_subsets() -> None:
    rng = np.random.default_rng(1)
    acc = rng.uniform(0.3, 0.9, size=(5, 8))
    est = few_dataset_estimate(acc, k=4, max_subsets=10, seed=3)
    k4 = est.per_k[3]
    assert (k4.n_subsets, k4.exhaustive) == (10, False)  # C(8,4) = 70 > 10
    assert est.per_k[0].exhaustive and est.per_k[0].n_subsets == 8
    assert est.to_dict() == few_dataset_estimate(acc, k=4, max_subsets=10, seed=3).to_dict()  # seeded
    with pytest.raises(ConfigError, match="between 1 and the number of datasets"):
        few_dataset_estimate(acc, k=9)


def test_bad_tables_are_clear_errors() -> None:
    with pytest.raises(DataError, match="2-D"):
        compute_xscore([0.1, 0.2])
    with pytest.raises(DataError, match="non-finite"):
        compute_xscore([[0.1, float("nan")]])
    with pytest.raises(DataError, match="duplicate model names"):
        compute_xscore([[0.1], [0.2]], ["a", "a"])
    with pytest.raises(DataError, match="1 dataset names for 2"):
        compute_xscore([[0.1, 0.2]], ["a"], ["x"])


def test_records_and_csv_tables(tmp_path) -> None:
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
    wide_csv.write_text("model,cifar10,flowers\nx,91.0,80.5\ny,90.0,82.0\n")
    table, models, datasets = read_table_csv(wide_csv)
    assert (table.tolist(), models, datasets) == ([[91.0, 80.5], [90.0, 82.0]], ["x", "y"], ["cifar10", "flowers"])
    bad = tmp_path / "bad.csv"
    bad.write_text("name,score\nx,1\n")
    with pytest.raises(DataError, match="expected columns"):
        read_table_csv(bad)


def test_report_dict_and_text() -> None:
    rep = compute_xscore(BEST, ["A", "B", "C"], ["d0", "d1", "d2"])
    d = rep.to_dict()
    assert [r["model"] for r in d["ranking"]] == ["A", "C", "B"]
    assert d["ranks"][1] == [2.0, 3.0, 3.0] and d["kendalls_w"] == pytest.approx(7 / 9)
    text = rep.format()
    assert text.splitlines()[2].split()[:3] == ["1", "A", "1.0000"] and "Kendall's W" in text
