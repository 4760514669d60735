r"""xScore: cross-dataset robustness of many models over many datasets, as the paper defines it.

Source. "Beyond ImageNet: Understanding Cross-Dataset Robustness of Lightweight Vision Models" (W. Zhang,
P. L. K. Ding, H. Liu; arXiv 2511.00335) and its journal version "xScore: A Simple Metric for Cross-Domain
Robustness in Lightweight Vision Models" (Algorithms 2026, 19(1), 14). The papers' text names the ingredients
(average accuracy across domains, stability, an estimate from four datasets); the exact definition below was read
from a public analysis script whose 11 models and 7 datasets are the paper's (its function
``compute_xscore_pair_and_summary`` and the four-dataset search after it). The tests reproduce that script's
figures from its own accuracy table (``tests/data/xscore_paper_accuracy.csv``).

Notation: an accuracy table :math:`A \in \mathbb{R}^{M \times D}`, :math:`a_{ij}` the accuracy of model *i* on
dataset *j* (higher is better; fraction or percent, any unit).

==========================  =========================================================================================
quantity                    definition
==========================  =========================================================================================
normalised accuracy         :math:`\tilde a_{ij} = (a_{ij} - \min_k a_{kj}) / (\max_k a_{kj} - \min_k a_{kj})`: each
                            dataset's column min-max scaled across the models (best model 1, worst 0)
generalisation              :math:`G_i = \frac1D \sum_j \tilde a_{ij}`
variance                    :math:`V_i = \frac{1}{D-1} \sum_j (\tilde a_{ij} - G_i)^2` (sample variance)
xScore                      :math:`X_i = G_i - \lambda V_i`, :math:`\lambda = 0.5` by default
==========================  =========================================================================================

So xScore rewards a model that is near the best on every dataset (high *G*) and penalises one whose standing
swings between datasets (high *V*). Because every column is min-max scaled, xScore is *relative to the models in
the table*: adding or removing a model changes everyone's score. It is unchanged by any increasing affine map of
a dataset's accuracies (percent vs fraction) and by reordering the datasets.

Two edge cases the paper's table never meets, decided here: a dataset on which every model scores the same
cannot separate them, and its normalised column is 1 for every model (no model is below the best there; a
warning names it); with a single dataset the sample variance is undefined and *V* is taken as 0.

**The k-dataset estimate** (the papers' "xScore can be estimated from just four datasets"): for every subset of
*k* datasets, an ordinary least-squares fit with intercept of the full-table xScore on the subset's *raw*
accuracies, :math:`X_i \approx \beta_0 + \sum_{j \in S} \beta_j a_{ij}`; the subset with the highest coefficient of
determination :math:`R^2` is kept, and its fit is the estimator a new model can be scored with after training on
those *k* datasets only. Ties in :math:`R^2` keep the first subset in the datasets' order. With :math:`M \le k + 1`
models every subset fits exactly (:math:`R^2 = 1`) and the choice says nothing; a warning says so.

Extra columns, kept because they help a reader and are not part of xScore: mean and worst-dataset accuracy (what
DomainBed and WILDS report), per-dataset ranks (1 = best, ties averaged), a rank-stability term
:math:`R_i = 1 - \sigma_i / \sigma_{max}` (population std of model *i*'s ranks over its largest possible value
:math:`(M-1)\sqrt{\lfloor D/2\rfloor\lceil D/2\rceil}/D`), and for the whole table Kendall's W (tie-corrected
concordance of the datasets' rankings: 1 = every dataset ranks the models alike, 0 = no agreement).

Everything here is numpy only and pure (no training, no torch): the runner ``zoo xscore`` lives in ``train/``.
"""

from __future__ import annotations

import csv
import itertools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError

__all__ = [
    "DEFAULT_LAMBDA",
    "ModelScore",
    "SubsetEstimate",
    "SubsetFit",
    "XScoreReport",
    "average_ranks",
    "compute_xscore",
    "fit_subset",
    "generalisation_and_variance",
    "kendalls_w",
    "max_rank_std",
    "normalise_columns",
    "rank_stability",
    "rank_table",
    "read_table_csv",
    "spearman_rho",
    "subset_estimate",
    "table_from_records",
    "xscore_values",
]

DEFAULT_LAMBDA = 0.5


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


def _check_lambda(lam: float) -> float:
    lam = float(lam)
    if not (math.isfinite(lam) and lam >= 0.0):
        raise ConfigError(f"xScore lambda (weight of the variance penalty) must be a finite number >= 0, got {lam}")
    return lam


# ----------------------------------------------------------------------------------------------- the formula


def normalise_columns(accuracy: Any, datasets: Sequence[str] | None = None) -> np.ndarray:
    """ã_ij: each dataset's column min-max scaled across the models (best 1, worst 0).

    A column where every model scores the same is 1 throughout (nobody is below the best there), with a warning
    naming the dataset, since such a dataset adds nothing to the comparison.
    """
    table = _as_table(accuracy)
    lo, hi = table.min(axis=0), table.max(axis=0)
    span = hi - lo
    flat = span <= 1e-12 * np.maximum(1.0, np.maximum(np.abs(hi), np.abs(lo)))
    if flat.any() and table.shape[0] > 1:
        names = _names(datasets, table.shape[1], "dataset", "dataset")
        warnings.warn(f"every model scores the same on {[names[j] for j in np.flatnonzero(flat)]}; those datasets "
                      "cannot separate the models (normalised to 1 for all)", stacklevel=2)
    out = np.ones_like(table)
    keep = ~flat
    out[:, keep] = (table[:, keep] - lo[keep]) / span[keep]
    return out


def generalisation_and_variance(accuracy: Any) -> tuple[np.ndarray, np.ndarray]:
    """(G, V) per model: mean and sample variance (n - 1) of the model's normalised accuracies; V = 0 for D = 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller that names datasets warns; here we only compute
        norm = normalise_columns(accuracy)
    g = norm.mean(axis=1)
    v = norm.var(axis=1, ddof=1) if norm.shape[1] > 1 else np.zeros(norm.shape[0])
    return g, v


def xscore_values(accuracy: Any, lam: float = DEFAULT_LAMBDA) -> np.ndarray:
    """X_i = G_i - λ V_i for every model of an (M, D) accuracy table (see the module docstring)."""
    lam = _check_lambda(lam)
    g, v = generalisation_and_variance(accuracy)
    return g - lam * v


# ----------------------------------------------------------------------------------------------- extra columns


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
    """Largest population std of one model's ranks: ⌊D/2⌋ datasets at rank 1 and ⌈D/2⌉ at rank M."""
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
    return np.clip(1.0 - sigma / smax, 0.0, 1.0)  # clip guards the last ulp: σ can exceed σ_max by rounding only


def kendalls_w(accuracy: Any) -> float:
    """Kendall's coefficient of concordance W of the datasets' rankings of the models, tie-corrected.

    NaN when it is undefined: fewer than two models, or every dataset ties all models (zero denominator).
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


def _nan_to_none(v: Any) -> Any:
    return None if isinstance(v, float) and math.isnan(v) else v


# ----------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ModelScore:
    """One model's row of the report; ``position`` is its place in the xScore ranking (1 = best)."""

    model: str
    position: int
    xscore: float
    generalisation: float  # G_i
    variance: float  # V_i
    normalised: dict[str, float]  # ã_ij per dataset
    mean_accuracy: float
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
    normalised: np.ndarray
    ranks: np.ndarray
    lam: float
    kendalls_w: float
    scores: list[ModelScore] = field(default_factory=list)

    def score(self, model: str) -> ModelScore:
        for s in self.scores:
            if s.model == model:
                return s
        raise KeyError(f"model {model!r} is not in this report; models: {self.models}")

    def xscores(self) -> np.ndarray:
        """xScore per model in the table's model order (not the ranking's)."""
        by_name = {s.model: s.xscore for s in self.scores}
        return np.array([by_name[m] for m in self.models])

    def to_dict(self) -> dict[str, Any]:
        return {
            "formula": "xScore = G - lambda * V; G, V = mean, sample variance of per-dataset min-max accuracies",
            "lambda": self.lam,
            "models": list(self.models),
            "datasets": list(self.datasets),
            "accuracy": self.accuracy.tolist(),
            "normalised": self.normalised.tolist(),
            "ranks": self.ranks.tolist(),
            "kendalls_w": _nan_to_none(self.kendalls_w),
            "ranking": [s.to_dict() for s in self.scores],
        }

    def format(self, extra: Mapping[str, Mapping[str, str]] | None = None) -> str:
        """The ranking as a fixed-width text table (what the CLI prints).

        ``extra``: more columns, ``{header: {model: text}}`` (the CLI adds parameters and MACs).
        """
        extra = dict(extra or {})
        widths = {h: max([len(h)] + [len(str(v)) for v in col.values()]) for h, col in extra.items()}
        head = f"{'#':>2}  {'model':<24} {'xScore':>7} {'G':>6} {'V':>6}"
        head += "".join(f" {h:>{widths[h]}}" for h in extra)
        head += f" {'mean':>8} {'worst':>8} {'stab.':>6}  worst dataset"
        rows = [head, "-" * len(head)]
        for s in self.scores:
            line = f"{s.position:>2}  {s.model:<24} {s.xscore:>7.3f} {s.generalisation:>6.3f} {s.variance:>6.3f}"
            line += "".join(f" {extra[h].get(s.model, ''):>{widths[h]}}" for h in extra)
            line += (f" {s.mean_accuracy:>8.4g} {s.worst_accuracy:>8.4g} {s.rank_stability:>6.3f}  "
                     f"{s.worst_dataset}")
            rows.append(line)
        w = "n/a" if math.isnan(self.kendalls_w) else f"{self.kendalls_w:.4f}"
        rows.append(f"xScore = G - {self.lam:g}·V over {len(self.datasets)} datasets; Kendall's W: {w}")
        return "\n".join(rows)


def compute_xscore(
    accuracy: Any,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    lam: float = DEFAULT_LAMBDA,
) -> XScoreReport:
    """xScore (the paper's G - λV) with its parts and the extra columns for an (M models, D datasets) table.

    The ranking sorts by xScore, then G, then mean accuracy (all higher first), then name, so it is deterministic
    even with exact ties.
    """
    lam = _check_lambda(lam)
    table = _as_table(accuracy)
    m_names = _names(models, table.shape[0], "model", "model")
    d_names = _names(datasets, table.shape[1], "dataset", "dataset")
    norm = normalise_columns(table, d_names)
    g, v = generalisation_and_variance(table)
    x = g - lam * v
    ranks = rank_table(table)
    stability = rank_stability(ranks)
    mean_acc = table.mean(axis=1)
    worst_idx = np.argmin(table, axis=1)
    order = sorted(range(len(m_names)), key=lambda i: (-x[i], -g[i], -mean_acc[i], m_names[i]))
    scores = [
        ModelScore(
            model=m_names[i],
            position=pos,
            xscore=float(x[i]),
            generalisation=float(g[i]),
            variance=float(v[i]),
            normalised={d: float(norm[i, j]) for j, d in enumerate(d_names)},
            mean_accuracy=float(mean_acc[i]),
            worst_accuracy=float(table[i, worst_idx[i]]),
            worst_dataset=d_names[int(worst_idx[i])],
            ranks={d: float(ranks[i, j]) for j, d in enumerate(d_names)},
            mean_rank=float(ranks[i].mean()),
            rank_std=float(ranks[i].std(ddof=0)),
            rank_stability=float(stability[i]),
        )
        for pos, i in enumerate(order, start=1)
    ]
    return XScoreReport(models=m_names, datasets=d_names, accuracy=table, normalised=norm, ranks=ranks, lam=lam,
                        kendalls_w=kendalls_w(table), scores=scores)


# ----------------------------------------------------------------------------------------------- k datasets


@dataclass(frozen=True)
class SubsetFit:
    """An OLS fit X ≈ intercept + Σ coefficients[j] · a_j over the raw accuracies of ``datasets``."""

    datasets: tuple[str, ...]
    coefficients: tuple[float, ...]
    intercept: float
    r2: float

    def predict(self, accuracies: Mapping[str, float] | Sequence[float]) -> float:
        """The estimated xScore of a model from its accuracies on the subset (a mapping by name, or in order)."""
        if isinstance(accuracies, Mapping):
            missing = [d for d in self.datasets if d not in accuracies]
            if missing:
                raise DataError(f"the estimate needs accuracies on {list(self.datasets)}; missing {missing}")
            vals = [float(accuracies[d]) for d in self.datasets]
        else:
            vals = [float(a) for a in accuracies]
            if len(vals) != len(self.datasets):
                raise DataError(f"the estimate needs {len(self.datasets)} accuracies ({list(self.datasets)}), "
                                f"got {len(vals)}")
        return self.intercept + sum(c * a for c, a in zip(self.coefficients, vals))

    def to_dict(self) -> dict[str, Any]:
        return {"datasets": list(self.datasets), "coefficients": list(self.coefficients),
                "intercept": self.intercept, "r2": _nan_to_none(self.r2)}


def fit_subset(accuracy: Any, target: Sequence[float] | np.ndarray, columns: Sequence[int],
               datasets: Sequence[str] | None = None) -> SubsetFit:
    """Least-squares fit with intercept of ``target`` on the raw accuracies of ``columns``; R² on the same rows.

    R² = 1 - SS_res / SS_tot; NaN when the target does not vary (SS_tot = 0).
    """
    table = _as_table(accuracy)
    d_names = _names(datasets, table.shape[1], "dataset", "dataset")
    y = np.asarray(target, dtype=np.float64).ravel()
    if len(y) != table.shape[0]:
        raise DataError(f"{len(y)} target values for {table.shape[0]} models")
    design = np.column_stack([np.ones(len(y)), table[:, list(columns)]])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ beta
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = float("nan") if ss_tot <= 0.0 else 1.0 - float(resid @ resid) / ss_tot
    return SubsetFit(datasets=tuple(d_names[j] for j in columns), coefficients=tuple(float(b) for b in beta[1:]),
                     intercept=float(beta[0]), r2=r2)


@dataclass(frozen=True)
class SubsetCurvePoint:
    """The best and mean R² over the k-dataset subsets examined for one k."""

    k: int
    best_r2: float
    best_subset: tuple[str, ...]
    mean_r2: float
    n_subsets: int
    exhaustive: bool

    def to_dict(self) -> dict[str, Any]:
        d = {k: _nan_to_none(getattr(self, k)) for k in self.__dataclass_fields__}
        d["best_subset"] = list(self.best_subset)
        return d


@dataclass(frozen=True)
class SubsetEstimate:
    """The paper's k-dataset estimator and how its ordering of the models compares with the full table's."""

    k: int
    fit: SubsetFit
    models: list[str]
    full: dict[str, float]  # full-table xScore per model
    estimated: dict[str, float]  # the fit's prediction per model
    full_order: list[str]  # best first
    estimated_order: list[str]
    spearman_rho: float  # between the two orderings
    n_subsets: int
    exhaustive: bool
    underdetermined: bool  # M <= k + 1: every subset fits exactly
    curve: list[SubsetCurvePoint] = field(default_factory=list)  # k = 1 .. D

    def moved(self) -> list[tuple[str, int, int]]:
        """(model, full-table position, estimated position) for every model the estimate places elsewhere."""
        est = {m: i for i, m in enumerate(self.estimated_order, start=1)}
        return [(m, i, est[m]) for i, m in enumerate(self.full_order, start=1) if est[m] != i]

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, **self.fit.to_dict(), "full": self.full, "estimated": self.estimated,
                "full_order": self.full_order, "estimated_order": self.estimated_order,
                "spearman_rho": _nan_to_none(self.spearman_rho),
                "moved": [{"model": m, "full_position": a, "estimated_position": b} for m, a, b in self.moved()],
                "n_subsets": self.n_subsets, "exhaustive": self.exhaustive, "underdetermined": self.underdetermined,
                "curve": [p.to_dict() for p in self.curve]}

    def format(self) -> str:
        f = self.fit
        terms = " + ".join(f"{c:.5g}·{d}" for c, d in zip(f.coefficients, f.datasets))
        lines = [f"{self.k}-dataset estimate: best of {self.n_subsets} subsets"
                 f"{'' if self.exhaustive else ' (sampled)'}: {', '.join(f.datasets)}, R² = {f.r2:.3f}",
                 f"  xScore ≈ {f.intercept:.5g} + {terms}   (raw accuracies, in the table's unit)",
                 f"  ordering vs the full table: Spearman rho {self.spearman_rho:.3f}; "
                 + ("same order" if not self.moved() else "moved: " + ", ".join(
                     f"{m} {a}->{b}" for m, a, b in self.moved()))]
        if self.underdetermined:
            lines.append(f"  ({len(self.models)} models <= k + 1: every subset fits exactly; the choice means nothing)")
        return "\n".join(lines)


def _subsets(n: int, k: int, max_subsets: int, rng: np.random.Generator) -> tuple[list[tuple[int, ...]], bool]:
    total = math.comb(n, k)
    if total <= max_subsets:
        return list(itertools.combinations(range(n), k)), True
    seen: set[tuple[int, ...]] = set()
    while len(seen) < max_subsets:
        seen.add(tuple(sorted(int(i) for i in rng.choice(n, size=k, replace=False))))
    return sorted(seen), False


def _best_fit(table: np.ndarray, y: np.ndarray, subsets: Sequence[tuple[int, ...]], names: Sequence[str]
              ) -> tuple[SubsetFit, list[float]]:
    best: SubsetFit | None = None
    r2s = []
    for s in subsets:
        f = fit_subset(table, y, s, names)
        r2s.append(f.r2)
        # strictly greater: among equal R² the first subset (datasets' order) stays; NaN never wins over a number
        if best is None or (not math.isnan(f.r2) and (math.isnan(best.r2) or f.r2 > best.r2)):
            best = f
    assert best is not None
    return best, r2s


def subset_estimate(
    accuracy: Any,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    k: int = 4,
    lam: float = DEFAULT_LAMBDA,
    max_subsets: int = 20000,
    seed: int = 0,
    curve: bool = True,
) -> SubsetEstimate:
    """The paper's k-dataset estimate: the best-R² OLS fit of the full xScore on k datasets' raw accuracies.

    Exhaustive while C(D, k) <= ``max_subsets``, else a seeded random sample (reported). ``curve``: also the best
    and mean R² for every k = 1..D (the agreement plot).
    """
    table = _as_table(accuracy)
    m_names = _names(models, table.shape[0], "model", "model")
    d_names = _names(datasets, table.shape[1], "dataset", "dataset")
    n_sets = table.shape[1]
    if not 1 <= k <= n_sets:
        raise ConfigError(f"subset size k must be between 1 and the number of datasets ({n_sets}), got {k}")
    if max_subsets < 1:
        raise ConfigError(f"max_subsets must be positive, got {max_subsets}")
    y = xscore_values(table, lam)
    underdetermined = table.shape[0] <= k + 1
    if underdetermined:
        warnings.warn(f"{table.shape[0]} models and k = {k}: with at most k + 1 models every subset fits the "
                      "xScore exactly, so the chosen subset says nothing; add models or lower k", stacklevel=2)
    rng = np.random.default_rng(seed)
    points: list[SubsetCurvePoint] = []
    chosen: tuple[SubsetFit, int, bool] | None = None
    for kk in range(1, n_sets + 1):
        if kk != k and not curve:
            continue
        subsets, exhaustive = _subsets(n_sets, kk, max_subsets, rng)
        best, r2s = _best_fit(table, y, subsets, d_names)
        defined = [r for r in r2s if not math.isnan(r)]
        points.append(SubsetCurvePoint(kk, best.r2, best.datasets, float(np.mean(defined)) if defined else math.nan,
                                       len(subsets), exhaustive))
        if kk == k:
            chosen = (best, len(subsets), exhaustive)
    assert chosen is not None
    fit, n_subsets, exhaustive = chosen
    cols = [d_names.index(d) for d in fit.datasets]
    pred = fit.intercept + table[:, cols] @ np.asarray(fit.coefficients)

    def order(v: np.ndarray) -> list[str]:
        return [m_names[i] for i in sorted(range(len(m_names)), key=lambda i: (-v[i], m_names[i]))]

    return SubsetEstimate(
        k=k, fit=fit, models=m_names,
        full={m: float(a) for m, a in zip(m_names, y)}, estimated={m: float(a) for m, a in zip(m_names, pred)},
        full_order=order(y), estimated_order=order(pred), spearman_rho=spearman_rho(pred, y),
        n_subsets=n_subsets, exhaustive=exhaustive, underdetermined=underdetermined,
        curve=points if curve else [],
    )


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
    (first column ``model``, one column per dataset), which is how tables are copied from papers. Lines starting
    with ``#`` are comments (a table's source)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"results table {str(path)!r} does not exist")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(line for line in f if not line.lstrip().startswith("#")))
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
