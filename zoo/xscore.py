r"""xScore: cross-dataset robustness of many models over many datasets, with every component explicit.

Sources. "Beyond ImageNet: Understanding Cross-Dataset Robustness of Lightweight Vision Models" (Zhang, Ding, Liu;
arXiv 2511.00335) and its journal version "xScore: A Simple Metric for Cross-Domain Robustness in Lightweight Vision
Models" (Algorithms 2026, 19(1), 14). Their text says xScore is "a simple metric that captures both average accuracy
across domains and the stability of model rankings" and that it "can be estimated from just four datasets"; related
work they cite (DomainBed, WILDS) reports mean and worst-case accuracy. The exact formula could not be retrieved
here, so this module defines one and keeps every part separately visible, so a reader can swap any part.

Notation: an accuracy table :math:`A \in \mathbb{R}^{M \times D}`, :math:`a_{ij}` the accuracy of model *i* on
dataset *j* (higher is better; any unit: fraction, percent, or any other positive affine scale).

==========================  ===================================================================  =================
quantity                    definition                                                           from
==========================  ===================================================================  =================
mean accuracy               :math:`\bar a_i = \frac1D \sum_j a_{ij}`                              papers' text
worst-dataset accuracy      :math:`\min_j a_{ij}`                                                 cited work
per-dataset rank            :math:`r_{ij}` = rank of model *i* among the *M* models on dataset    papers' text
                            *j*, 1 = best, ties get the mean of the positions they span          (ties: ours)
rank spread                 :math:`\sigma_i = \sqrt{\frac1D \sum_j (r_{ij} - \bar r_i)^2}`        ours (pop. std)
its maximum                 :math:`\sigma_{max}(M, D) = (M-1)\sqrt{\lfloor D/2\rfloor             ours
                            \lceil D/2\rceil}\,/\,D` (half the datasets at rank 1, half at *M*)
rank stability              :math:`R_i = 1 - \sigma_i/\sigma_{max}`, :math:`R_i = 1` when         papers' idea,
                            :math:`\sigma_{max} = 0` (one model or one dataset); in [0, 1]       form ours
normalised mean accuracy    :math:`\tilde a_i = (\bar a_i - \min_k \bar a_k) /                    ours
                            (\max_k \bar a_k - \min_k \bar a_k)`, 1 when all equal
xScore                      :math:`X_i = w\,\tilde a_i + (1 - w)\,R_i`, default :math:`w = 1/2`   papers' idea,
                                                                                                 form ours
==========================  ===================================================================  =================

Consequences of these choices (pinned by the tests): xScore lies in [0, 1]; it is unchanged when every accuracy is
mapped through the same increasing affine map :math:`a \mapsto \alpha a + \beta`, :math:`\alpha > 0` (so percent
and fraction tables give identical scores), unchanged by reordering datasets, and a model that is best on every
dataset scores exactly 1. Stability rewards consistency, not quality: a model last everywhere is perfectly stable
(:math:`R = 1`) and only the accuracy term places it low; with the default weight a consistently last model
(:math:`X = 0.5`) can outrank an erratic middling one. Raise ``weight`` when that is unwanted.

Concordance of the whole table is Kendall's W over the *D* datasets as judges of the *M* models, with the usual tie
correction: :math:`W = 12 S / (D^2 (M^3 - M) - D \sum_j T_j)`, :math:`S = \sum_i (\rho_i - D(M+1)/2)^2`,
:math:`\rho_i = \sum_j r_{ij}`, :math:`T_j = \sum_g (t_g^3 - t_g)` over the groups of *t_g* tied models on dataset
*j*. W = 1: every dataset ranks the models alike; W = 0: no agreement.

Few-dataset estimate (the procedure behind "estimated from four datasets", details ours): for each subset of *k*
datasets, compute xScore on those columns only and its Spearman ρ (Pearson correlation of average ranks) with the
full-table xScore; report the best subset for the requested *k* and, for every *k* = 1..D, the best, mean and worst
ρ. Exhaustive while the number of subsets is at most ``max_subsets``, else a seeded random sample (reported).

Everything here is numpy only and pure (no training, no torch): the runner ``zoo xscore`` lives in ``train/``.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError

__all__ = [
    "FewDatasetEstimate",
    "ModelScore",
    "XScoreReport",
    "average_ranks",
    "compute_xscore",
    "few_dataset_estimate",
    "kendalls_w",
    "max_rank_std",
    "rank_stability",
    "rank_table",
    "read_table_csv",
    "spearman_rho",
    "table_from_records",
    "xscore_values",
]


# ----------------------------------------------------------------------------------------------- validation


def _as_table(accuracy: Any) -> np.ndarray:
    """A finite float (M, D) array with M >= 1 and D >= 1, or a DataError that says what is wrong."""
    try:
        table = np.asarray(accuracy, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"accuracy table must be numeric (models x datasets): {e}") from e
    if table.ndim != 2:
        raise DataError(f"accuracy table must be 2-D (models x datasets), got shape {table.shape}")
    if table.shape[0] < 1 or table.shape[1] < 1:
        raise DataError(f"accuracy table needs at least one model and one dataset, got shape {table.shape}")
    if not np.all(np.isfinite(table)):
        bad = [tuple(int(v) for v in ij) for ij in np.argwhere(~np.isfinite(table))[:5]]
        raise DataError(f"accuracy table has non-finite entries at (model, dataset) {bad}; fill or drop those cells")
    return table


def _names(names: Sequence[str] | None, n: int, prefix: str, what: str) -> list[str]:
    if names is None:
        return [f"{prefix}{i}" for i in range(n)]
    names = [str(x) for x in names]
    if len(names) != n:
        raise DataError(f"{len(names)} {what} names for {n} {what}s in the table")
    if len(set(names)) != len(names):
        dup = sorted({x for x in names if names.count(x) > 1})
        raise DataError(f"duplicate {what} names: {dup}")
    return names


def _check_weight(weight: float) -> float:
    weight = float(weight)
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"xScore weight must lie in [0, 1] (share of the accuracy term), got {weight}")
    return weight


# ----------------------------------------------------------------------------------------------- components


def average_ranks(values: Sequence[float] | np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Ranks 1..n of ``values`` (1 = best), ties sharing the mean of the positions they span ("fractional" ranks).

    Average ranks keep the rank sum at n(n+1)/2 whatever the ties, which Kendall's W and Spearman's ρ rely on.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    key = -v if higher_is_better else v
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    ranks = np.empty(len(v), dtype=np.float64)
    start = 0
    n = len(v)
    while start < n:
        stop = start + 1
        while stop < n and sorted_key[stop] == sorted_key[start]:
            stop += 1
        ranks[order[start:stop]] = (start + 1 + stop) / 2.0  # mean of positions start+1 .. stop
        start = stop
    return ranks


def rank_table(accuracy: Any) -> np.ndarray:
    """(M, D) ranks of the models within each dataset column; 1 = most accurate, ties averaged."""
    table = _as_table(accuracy)
    return np.stack([average_ranks(table[:, j]) for j in range(table.shape[1])], axis=1)


def max_rank_std(n_models: int, n_datasets: int) -> float:
    """Largest population std of one model's ranks: ⌊D/2⌋ datasets at rank 1 and ⌈D/2⌉ at rank M.

    A set of D numbers in [1, M] has the largest spread when they sit at the two ends, split as evenly as D allows;
    the variance is then (M-1)² ⌊D/2⌋⌈D/2⌉ / D². Normalising by this (not by the looser (M-1)/2) lets stability
    reach 0 for odd D too.
    """
    if n_models < 1 or n_datasets < 1:
        raise DataError(f"need at least one model and one dataset, got {n_models} x {n_datasets}")
    half_down, half_up = n_datasets // 2, (n_datasets + 1) // 2
    return (n_models - 1) * math.sqrt(half_down * half_up) / n_datasets


def rank_stability(ranks: Any) -> np.ndarray:
    """R_i = 1 - σ_i / σ_max(M, D) per model from an (M, D) rank table; 1 where σ_max = 0 (nothing can vary)."""
    r = np.asarray(ranks, dtype=np.float64)
    if r.ndim != 2:
        raise DataError(f"rank table must be 2-D (models x datasets), got shape {r.shape}")
    sigma = r.std(axis=1, ddof=0)
    smax = max_rank_std(*r.shape)
    if smax == 0.0:
        return np.ones(r.shape[0])
    # clip guards the last ulp: σ can exceed σ_max by rounding only
    return np.clip(1.0 - sigma / smax, 0.0, 1.0)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi - lo <= 1e-12 * max(1.0, abs(hi), abs(lo)):
        return np.ones_like(x)  # no spread: the term cannot separate the models; every model gets the full share
    return (x - lo) / (hi - lo)


def xscore_values(accuracy: Any, weight: float = 0.5) -> np.ndarray:
    """X_i = w · minmax(mean accuracy)_i + (1 - w) · R_i for every model of an (M, D) accuracy table."""
    weight = _check_weight(weight)
    table = _as_table(accuracy)
    acc_term = _minmax(table.mean(axis=1))
    stab_term = rank_stability(rank_table(table))
    return weight * acc_term + (1.0 - weight) * stab_term


def kendalls_w(accuracy: Any) -> float:
    """Kendall's coefficient of concordance W of the datasets' rankings of the models, tie-corrected.

    NaN when it is undefined: fewer than two models, or every dataset ties all models (zero denominator).
    With one dataset W = 1 whenever that dataset separates the models at all (a judge agrees with itself).
    """
    ranks = rank_table(accuracy)
    m_models, d_sets = ranks.shape
    if m_models < 2:
        return float("nan")
    rank_sums = ranks.sum(axis=1)
    s = float(np.sum((rank_sums - d_sets * (m_models + 1) / 2.0) ** 2))
    tie_term = 0.0
    for j in range(d_sets):
        _, counts = np.unique(ranks[:, j], return_counts=True)
        tie_term += float(np.sum(counts.astype(np.float64) ** 3 - counts))
    denom = d_sets**2 * (m_models**3 - m_models) - d_sets * tie_term
    if denom <= 0:
        return float("nan")
    return 12.0 * s / denom


def spearman_rho(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's ρ: Pearson correlation of the average ranks of ``a`` and ``b``; NaN if either is constant."""
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.shape != rb.shape:
        raise DataError(f"spearman_rho needs equal lengths, got {ra.shape[0]} and {rb.shape[0]}")
    da, db = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(np.sum(da * da)) * float(np.sum(db * db)))
    if denom == 0.0:
        return float("nan")
    return float(np.sum(da * db) / denom)


# ----------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ModelScore:
    """One model's row of the report; ``position`` is its place in the xScore ranking (1 = best)."""

    model: str
    position: int
    xscore: float
    mean_accuracy: float
    normalised_mean_accuracy: float
    worst_accuracy: float
    worst_dataset: str
    ranks: dict[str, float]
    mean_rank: float
    rank_std: float
    rank_stability: float

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class XScoreReport:
    """Everything ``compute_xscore`` derives from one table; ``scores`` is sorted best first."""

    models: list[str]
    datasets: list[str]
    accuracy: np.ndarray
    ranks: np.ndarray
    weight: float
    kendalls_w: float
    scores: list[ModelScore] = field(default_factory=list)

    def score(self, model: str) -> ModelScore:
        for s in self.scores:
            if s.model == model:
                return s
        raise KeyError(f"model {model!r} is not in this report; models: {self.models}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": list(self.models),
            "datasets": list(self.datasets),
            "accuracy": self.accuracy.tolist(),
            "ranks": self.ranks.tolist(),
            "weight": self.weight,
            "kendalls_w": None if math.isnan(self.kendalls_w) else self.kendalls_w,
            "ranking": [s.to_dict() for s in self.scores],
        }

    def format(self) -> str:
        """The ranking as a fixed-width text table (what the CLI prints)."""
        head = f"{'#':>2}  {'model':<24} {'xScore':>7} {'mean':>8} {'worst':>8} {'stab.':>6}  worst dataset"
        rows = [head, "-" * len(head)]
        for s in self.scores:
            rows.append(
                f"{s.position:>2}  {s.model:<24} {s.xscore:>7.4f} {s.mean_accuracy:>8.4g} {s.worst_accuracy:>8.4g} "
                f"{s.rank_stability:>6.3f}  {s.worst_dataset}"
            )
        w = "n/a" if math.isnan(self.kendalls_w) else f"{self.kendalls_w:.4f}"
        rows.append(f"Kendall's W over {len(self.datasets)} datasets: {w}   (weight w = {self.weight})")
        return "\n".join(rows)


def compute_xscore(
    accuracy: Any,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    weight: float = 0.5,
) -> XScoreReport:
    """Every per-model component, xScore, its ranking and Kendall's W for an (M models, D datasets) table.

    The ranking sorts by xScore, then mean accuracy, then worst accuracy (both higher first), then name, so it is
    deterministic even with exact ties.
    """
    weight = _check_weight(weight)
    table = _as_table(accuracy)
    m_names = _names(models, table.shape[0], "model", "model")
    d_names = _names(datasets, table.shape[1], "dataset", "dataset")
    ranks = rank_table(table)
    stability = rank_stability(ranks)
    mean_acc = table.mean(axis=1)
    norm_acc = _minmax(mean_acc)
    x = weight * norm_acc + (1.0 - weight) * stability
    worst_idx = np.argmin(table, axis=1)
    order = sorted(range(len(m_names)), key=lambda i: (-x[i], -mean_acc[i], -table[i].min(), m_names[i]))
    scores = []
    for pos, i in enumerate(order, start=1):
        scores.append(
            ModelScore(
                model=m_names[i],
                position=pos,
                xscore=float(x[i]),
                mean_accuracy=float(mean_acc[i]),
                normalised_mean_accuracy=float(norm_acc[i]),
                worst_accuracy=float(table[i, worst_idx[i]]),
                worst_dataset=d_names[int(worst_idx[i])],
                ranks={d: float(ranks[i, j]) for j, d in enumerate(d_names)},
                mean_rank=float(ranks[i].mean()),
                rank_std=float(ranks[i].std(ddof=0)),
                rank_stability=float(stability[i]),
            )
        )
    return XScoreReport(
        models=m_names,
        datasets=d_names,
        accuracy=table,
        ranks=ranks,
        weight=weight,
        kendalls_w=kendalls_w(table),
        scores=scores,
    )


# ----------------------------------------------------------------------------------------------- few datasets


@dataclass(frozen=True)
class SubsetAgreement:
    """Agreement of k-dataset xScores with the full-table xScore over the subsets examined."""

    k: int
    best_rho: float
    best_subset: tuple[str, ...]
    mean_rho: float
    worst_rho: float
    n_subsets: int
    exhaustive: bool

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["best_subset"] = list(self.best_subset)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


@dataclass(frozen=True)
class FewDatasetEstimate:
    """The best k-dataset subset for the requested k, and the agreement curve for every k = 1..D."""

    k: int
    best_subset: tuple[str, ...]
    best_rho: float
    per_k: list[SubsetAgreement]

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "best_subset": list(self.best_subset),
            "best_rho": None if math.isnan(self.best_rho) else self.best_rho,
            "per_k": [a.to_dict() for a in self.per_k],
        }


def _subsets(n: int, k: int, max_subsets: int, rng: np.random.Generator) -> tuple[list[tuple[int, ...]], bool]:
    total = math.comb(n, k)
    if total <= max_subsets:
        return list(itertools.combinations(range(n), k)), True
    seen: set[tuple[int, ...]] = set()
    while len(seen) < max_subsets:
        seen.add(tuple(sorted(int(i) for i in rng.choice(n, size=k, replace=False))))
    return sorted(seen), False


def few_dataset_estimate(
    accuracy: Any,
    datasets: Sequence[str] | None = None,
    k: int = 4,
    weight: float = 0.5,
    max_subsets: int = 20000,
    seed: int = 0,
) -> FewDatasetEstimate:
    """Which k datasets reproduce the full-table xScore ranking best (Spearman ρ), and ρ for every k.

    Subsets whose ρ is undefined (constant xScores) count as worse than any defined ρ; among equal ρ the first
    subset in lexicographic order of dataset positions wins, so the answer is deterministic.
    """
    table = _as_table(accuracy)
    d_names = _names(datasets, table.shape[1], "dataset", "dataset")
    n_sets = table.shape[1]
    if not 1 <= k <= n_sets:
        raise ConfigError(f"few-dataset k must be between 1 and the number of datasets ({n_sets}), got {k}")
    if max_subsets < 1:
        raise ConfigError(f"max_subsets must be positive, got {max_subsets}")
    weight = _check_weight(weight)
    full = xscore_values(table, weight)
    rng = np.random.default_rng(seed)
    per_k: list[SubsetAgreement] = []
    for kk in range(1, n_sets + 1):
        subsets, exhaustive = _subsets(n_sets, kk, max_subsets, rng)
        rhos = np.array([spearman_rho(xscore_values(table[:, list(s)], weight), full) for s in subsets])
        defined = ~np.isnan(rhos)
        if defined.any():
            best_i = int(np.argmax(np.where(defined, rhos, -np.inf)))
            best, mean, worst = float(rhos[best_i]), float(rhos[defined].mean()), float(rhos[defined].min())
        else:
            best_i, best, mean, worst = 0, float("nan"), float("nan"), float("nan")
        per_k.append(
            SubsetAgreement(
                k=kk,
                best_rho=best,
                best_subset=tuple(d_names[i] for i in subsets[best_i]),
                mean_rho=mean,
                worst_rho=worst,
                n_subsets=len(subsets),
                exhaustive=exhaustive,
            )
        )
    chosen = per_k[k - 1]
    return FewDatasetEstimate(k=k, best_subset=chosen.best_subset, best_rho=chosen.best_rho, per_k=per_k)


# ----------------------------------------------------------------------------------------------- tables


def table_from_records(
    records: Iterable[Mapping[str, Any]],
    model_key: str = "model",
    dataset_key: str = "dataset",
    value_key: str = "accuracy",
) -> tuple[np.ndarray, list[str], list[str]]:
    """Long-form rows {model, dataset, accuracy} -> (M, D) table, model names, dataset names.

    Names keep their order of first appearance; a repeated cell keeps its last value (an appended results file
    that re-ran a cell). A missing cell is a DataError naming it: xScore needs the full grid.
    """
    cells: dict[tuple[str, str], float] = {}
    models: list[str] = []
    datasets: list[str] = []
    for n, row in enumerate(records, start=1):
        try:
            m, d, raw = str(row[model_key]), str(row[dataset_key]), row[value_key]
        except KeyError as e:
            raise DataError(f"row {n} lacks the column {e}; expected {model_key}, {dataset_key}, {value_key}") from e
        try:
            v = float(raw)
        except (TypeError, ValueError) as e:
            raise DataError(f"row {n} ({m}, {d}): accuracy {raw!r} is not a number") from e
        if m not in models:
            models.append(m)
        if d not in datasets:
            datasets.append(d)
        cells[(m, d)] = v
    if not cells:
        raise DataError("the results table is empty")
    missing = [(m, d) for m in models for d in datasets if (m, d) not in cells]
    if missing:
        shown = ", ".join(f"({m}, {d})" for m, d in missing[:8])
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        raise DataError(f"the table is incomplete: no accuracy for {shown}{more}")
    table = np.array([[cells[(m, d)] for d in datasets] for m in models], dtype=np.float64)
    return _as_table(table), models, datasets


def read_table_csv(path: str | Path) -> tuple[np.ndarray, list[str], list[str]]:
    """Read an accuracy table from CSV, long form (columns model, dataset, accuracy, others ignored) or wide form
    (first column ``model``, one column per dataset), which is how tables are copied from papers."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"results table {str(path)!r} does not exist")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"{path}: no rows")
    header = list(rows[0].keys())
    if {"model", "dataset", "accuracy"} <= set(header):
        return table_from_records(rows)
    if header and header[0] == "model" and len(header) > 1:
        long = [{"model": r["model"], "dataset": d, "accuracy": r[d]} for r in rows for d in header[1:]]
        return table_from_records(long)
    raise DataError(
        f"{path}: expected columns 'model,dataset,accuracy' (long form) or 'model,<dataset>,...' (wide form), "
        f"got {header}"
    )
