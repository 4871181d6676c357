"""Error-adjusted area estimates and accuracy, with confidence intervals, from a stratified reference sample.

Counting a map's pixels (or chips) gives biased areas whenever the map has errors: omission and commission
do not cancel, and for rare classes such as change they rarely come close. The remedy described by
Olofsson et al. (2014, "Good practices for estimating area and assessing accuracy of land change", Remote
Sensing of Environment 148: 42-57) is a probability sample of reference labels, stratified by the map, and
stratified estimators of the area proportions, the user's, producer's and overall accuracies and their
standard errors. This module implements those estimators from their formulas (written out in
:func:`olofsson`), the chip sampling that feeds them, and the paper's sample-size formula (:func:`sample_size`).

Notation (the paper's): map class ``i`` is stratum ``i`` with mapped area ``A_i`` and weight
``W_i = A_i / A``; ``n_ij`` sample units were mapped ``i`` and are ``j`` in the reference; ``n_i.`` is the
stratum's sample size. The estimated proportion of the area that is mapped ``i`` and truly ``j`` is
``p_ij = W_i n_ij / n_i.``.

The estimators are those of stratified random sampling with the map classes as strata. They are unbiased
when the sample was drawn that way (as :func:`stratified_sample` does); for a simple random sample they are
the usual post-stratified estimators. A sample stratified by something other than the map being assessed
needs the more general estimators of Stehman (2014), which this module does not provide.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from pyproj import CRS, Transformer
from shapely import box

from tiling.errors import InputError
from tiling.grid import parse_cell

__all__ = ["parse_cell"]  # re-exported: its home is tiling.grid

#: Allocation methods understood by :func:`allocate` and :func:`stratified_sample`.
ALLOCATIONS = ("proportional", "equal")

#: The fewest sample units :func:`stratified_sample` draws from a stratum (unless it has fewer chips): one
#: unit leaves the stratum's variance, and every interval it enters, without an estimate.
MIN_PER_STRATUM = 2


# --------------------------------------------------------------------------------------------------------
# Error matrix and the Olofsson et al. (2014) estimators
# --------------------------------------------------------------------------------------------------------

def error_matrix(map_labels: Sequence[object] | pd.Series, ref_labels: Sequence[object] | pd.Series,
                 classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Sample counts ``n_ij``: map class (rows) x reference class (columns).

    Units whose map or reference label is missing (not yet interpreted) are left out.

    Args:
        map_labels: the map class of each sample unit.
        ref_labels: the reference class of each sample unit, in the same order.
        classes: the classes, in output order; by default the sorted union of both label sets. Labels
            outside ``classes`` are an error, so a typo in a reference file cannot vanish silently.

    Returns:
        An integer DataFrame indexed by map class (``index.name == "map"``) with one column per reference
        class (``columns.name == "reference"``), zeros included.
    """
    mapped = pd.Series(np.asarray(map_labels, dtype=object))
    reference = pd.Series(np.asarray(ref_labels, dtype=object))
    if len(mapped) != len(reference):
        raise InputError(f"{len(mapped)} map labels but {len(reference)} reference labels; one per sample "
                         "unit is needed")
    labelled = mapped.notna() & reference.notna()
    mapped, reference = mapped[labelled].astype(str), reference[labelled].astype(str)
    if classes is None:
        classes = sorted(set(mapped) | set(reference))
    classes = [str(c) for c in classes]
    unknown = sorted((set(mapped) | set(reference)) - set(classes))
    if unknown:
        raise InputError(f"labels {unknown} are not among the classes {classes}")
    counts = pd.crosstab(pd.Categorical(mapped, categories=classes), pd.Categorical(reference, categories=classes),
                         dropna=False)
    counts = counts.reindex(index=classes, columns=classes, fill_value=0).astype(np.int64)
    counts.index.name, counts.columns.name = "map", "reference"
    return counts


@dataclass(frozen=True)
class AreaEstimate:
    """Error-adjusted areas and accuracies estimated from a stratified sample.

    All confidence intervals are ``estimate ± z * SE``; ``*_ci`` columns hold the half-width ``z * SE``.
    Areas are in the unit of the mapped areas given to :func:`olofsson` (``unit`` records its name).

    Attributes:
        counts: sample counts ``n_ij``, map class (rows) x reference class (columns).
        proportions: estimated area proportions ``p_ij``, same layout; it sums to 1.
        area: per class: ``mapped_area`` (map's pixel-counting area), ``mapped_proportion`` (``W_i``),
            ``proportion`` (``p_.j``, error-adjusted), ``proportion_se``, ``area`` (error-adjusted),
            ``area_se``, ``area_ci`` (half-width), ``area_low``, ``area_high``.
        accuracy: per class: ``n`` (sample units mapped as the class), ``users``, ``users_se``,
            ``users_ci``, ``producers``, ``producers_se``, ``producers_ci``.
        overall: ``accuracy``, ``se``, ``ci`` and ``n`` (the total sample size).
        z: the normal quantile used for the intervals.
        unit: name of the area unit, e.g. ``"km²"`` or ``"pixels"``.
    """

    counts: pd.DataFrame
    proportions: pd.DataFrame
    area: pd.DataFrame
    accuracy: pd.DataFrame
    overall: pd.Series
    z: float = 1.96
    unit: str = ""

    def summary(self) -> pd.DataFrame:
        """One table per class with areas and accuracies, for reports and CSV files."""
        table = self.area[["mapped_area", "area", "area_ci", "area_low", "area_high"]].join(
            self.accuracy[["n", "users", "users_ci", "producers", "producers_ci"]])
        table.index.name = "class"
        return table


def olofsson(counts: pd.DataFrame, mapped_area: Mapping[str, float] | pd.Series, z: float = 1.96,
             unit: str = "", population: Mapping[str, float] | pd.Series | None = None) -> AreaEstimate:
    """Stratified estimates of area and accuracy from sample counts (Olofsson et al. 2014).

    The strata are the map classes (the rows of ``counts``). Per class ``k``, with the per-stratum variance
    term ``v_ik = f_i (n_ik/n_i.)(1 - n_ik/n_i.) / (n_i. - 1)``:

    - area proportion ``p_.k = sum_i W_i n_ik / n_i.`` and its standard error ``S(p_.k) = sqrt(sum_i W_i² v_ik)``;
      area ``A p_.k`` and ``S(A p_.k) = A S(p_.k)``, ``A`` the total mapped area;
    - user's accuracy ``U_k = p_kk / p_k. = n_kk / n_k.`` with ``V(U_k) = v_kk``;
    - producer's accuracy ``P_k = p_kk / p_.k`` with the variance (the paper's eq. 7)
      ``V(P_k) = [W_k² (1 - P_k)² v_kk + P_k² sum_{i != k} W_i² v_ik] / p_.k²``;
    - overall accuracy ``O = sum_k p_kk`` with ``V(O) = sum_i W_i² v_ii``.

    ``f_i = 1 - n_i./N_i`` is the finite population correction of stratum ``i`` when its number of sampling
    units ``N_i`` (chips, pixels) is given as ``population``, else 1 as in the paper. It matters where a
    sample takes a large share of a small stratum -- a rare change class of a few chips -- and it makes a
    stratum sampled in full (a census) exact: zero variance, also with a single unit.

    A stratum holding a single sample unit that is not a census has a variance that cannot be estimated
    from the sample; rather than report intervals of NaN (or pretend it is zero) this refuses, naming the
    strata: draw at least two units in each (as :func:`stratified_sample` does), or merge the stratum into
    a neighbouring class before mapping.

    Args:
        counts: sample counts ``n_ij``, map classes as rows and reference classes as columns (for example
            from :func:`error_matrix`). Classes that appear only as rows or only as columns are allowed.
        mapped_area: the map's area of each map class (any unit: pixels, chips, km², ha). Every class with
            a positive mapped area must have sample units.
        z: normal quantile of the confidence intervals (1.96 for 95%; :func:`z_value` gives it for a level).
        unit: name of the area unit, kept with the result.
        population: number of sampling units ``N_i`` in each stratum (map class), for the finite population
            correction; by default none is applied (the sample is taken as tiny next to the strata).

    Returns:
        An :class:`AreaEstimate`.

    Raises:
        InputError: counts or areas that are not numbers of the right sign, a mapped class without a sample
            unit, a stratum with more sample units than ``population`` gives it, or a single-unit stratum
            that is not a census.
    """
    if not isinstance(counts, pd.DataFrame):
        raise InputError("the sample counts must be a DataFrame (map classes as rows, reference as columns)")
    values = counts.to_numpy(dtype=float)
    if values.size and (np.isnan(values).any() or (values < 0).any() or (values != np.round(values)).any()):
        raise InputError("sample counts must be non-negative whole numbers")
    areas = pd.Series(mapped_area, dtype=float)
    areas.index = areas.index.astype(str)
    if areas.isna().any() or (areas < 0).any():
        raise InputError("mapped areas must be non-negative numbers")
    rows = [str(c) for c in counts.index]
    cols = [str(c) for c in counts.columns]
    classes = list(dict.fromkeys(rows + cols + [c for c in areas.index if areas[c] > 0]))

    n = pd.DataFrame(values, index=rows, columns=cols).groupby(level=0).sum().T.groupby(level=0).sum().T
    n = n.reindex(index=classes, columns=classes, fill_value=0.0).to_numpy(dtype=float)
    missing_area = [c for c in rows if c not in areas.index and counts.loc[c].sum() > 0]
    if missing_area:
        raise InputError(f"no mapped area given for map class(es) {missing_area}")
    a = areas.reindex(classes, fill_value=0.0).to_numpy(dtype=float)
    total = a.sum()
    if total <= 0:
        raise InputError("the mapped areas sum to zero")
    n_i = n.sum(axis=1)
    unsampled = [c for c, ai, ni in zip(classes, a, n_i, strict=True) if ai > 0 and ni == 0]
    if unsampled:
        raise InputError(f"map class(es) {unsampled} have mapped area but no sample units; every stratum needs "
                         "a sample to estimate area")
    fpc = _finite_population_correction(classes, a, n_i, population)
    lonely = [c for c, ai, ni, f in zip(classes, a, n_i, fpc, strict=True) if ai > 0 and ni == 1 and f > 0]
    if lonely:
        known = " (and not a census of its stratum)" if population is not None else ""
        raise InputError(f"stratum {', '.join(map(repr, lonely))} holds a single sample unit{known}: its variance "
                         "cannot be estimated; label at least 2 units in every stratum, or merge it into another "
                         "class" + ("" if population is not None else ", or give the strata's sizes (population) "
                                    "if it is a census"))

    w = a / total
    sampled = n_i > 0
    frac = np.zeros_like(n)
    frac[sampled] = n[sampled] / n_i[sampled, None]
    p = w[:, None] * frac
    # Per-stratum variance terms f_i (n_ik/n_i.)(1 - n_ik/n_i.)/(n_i. - 1): zero for a census (f_i = 0, also
    # when n_i. == 1), and irrelevant for strata of zero weight (W_i = 0), whose units do not enter the estimates.
    with np.errstate(divide="ignore", invalid="ignore"):
        term = fpc[:, None] * frac * (1.0 - frac) / (n_i[:, None] - 1.0)
    term[(w == 0) | (fpc == 0) | ~sampled] = 0.0

    p_col = p.sum(axis=0)
    p_se = np.sqrt((w[:, None] ** 2 * term).sum(axis=0))
    users = np.where(sampled, np.diag(frac), np.nan)
    users_var = np.diag(term).copy()
    users_var[~sampled] = np.nan
    overall = float(np.trace(p))
    overall_var = float((w ** 2 * np.diag(term)).sum())

    with np.errstate(divide="ignore", invalid="ignore"):
        producers = np.where(p_col > 0, np.diag(p) / p_col, np.nan)
        # Eq. 7 written with weights W instead of pixel counts N: the ratio is scale-free, so the mapped
        # areas may be given in any unit.
        off_diagonal = (w[:, None] ** 2 * term).sum(axis=0) - w ** 2 * np.diag(term)
        producers_var = (w ** 2 * (1 - producers) ** 2 * np.diag(term) + producers ** 2 * off_diagonal) / p_col ** 2

    area_table = pd.DataFrame({
        "mapped_area": a,
        "mapped_proportion": w,
        "proportion": p_col,
        "proportion_se": p_se,
        "area": total * p_col,
        "area_se": total * p_se,
    }, index=pd.Index(classes, name="class"))
    area_table["area_ci"] = z * area_table["area_se"]
    area_table["area_low"] = area_table["area"] - area_table["area_ci"]
    area_table["area_high"] = area_table["area"] + area_table["area_ci"]

    accuracy = pd.DataFrame({
        "n": n_i.astype(np.int64),
        "users": users,
        "users_se": np.sqrt(users_var),
        "producers": producers,
        "producers_se": np.sqrt(producers_var),
    }, index=pd.Index(classes, name="class"))
    accuracy["users_ci"] = z * accuracy["users_se"]
    accuracy["producers_ci"] = z * accuracy["producers_se"]
    accuracy = accuracy[["n", "users", "users_se", "users_ci", "producers", "producers_se", "producers_ci"]]

    overall_se = math.sqrt(overall_var) if not math.isnan(overall_var) else math.nan
    overall_row = pd.Series({"accuracy": overall, "se": overall_se, "ci": z * overall_se,
                             "n": int(n_i.sum())})
    count_table = pd.DataFrame(n.astype(np.int64), index=pd.Index(classes, name="map"),
                               columns=pd.Index(classes, name="reference"))
    prop_table = pd.DataFrame(p, index=count_table.index, columns=count_table.columns)
    return AreaEstimate(counts=count_table, proportions=prop_table, area=area_table, accuracy=accuracy,
                        overall=overall_row, z=float(z), unit=unit)


def _finite_population_correction(classes: Sequence[str], areas: np.ndarray, n_i: np.ndarray,
                                   population: Mapping[str, float] | pd.Series | None) -> np.ndarray:
    """``1 - n_i./N_i`` per stratum (1 without ``population``), checked against the sample counts."""
    if population is None:
        return np.ones(len(classes))
    sizes = pd.Series(population, dtype=float)
    sizes.index = sizes.index.astype(str)
    if sizes.isna().any() or (sizes < 0).any():
        raise InputError("strata sizes (population) must be non-negative numbers")
    missing = [c for c, ai in zip(classes, areas, strict=True) if ai > 0 and c not in sizes.index]
    if missing:
        raise InputError(f"no stratum size (population) given for map class(es) {missing}")
    big_n = sizes.reindex(list(classes)).to_numpy(dtype=float)
    over = [c for c, ni, size in zip(classes, n_i, big_n, strict=True) if ni > 0 and np.isfinite(size) and ni > size]
    if over:
        raise InputError(f"strata {over} hold more sample units than their population; a sample is drawn "
                         "without replacement from the stratum's units")
    with np.errstate(divide="ignore", invalid="ignore"):
        fpc = np.where(np.isfinite(big_n) & (big_n > 0), 1.0 - n_i / big_n, 1.0)
    return np.clip(fpc, 0.0, 1.0)


def z_value(confidence: float = 0.95) -> float:
    """The normal quantile of a two-sided interval at ``confidence`` (1.96 for 0.95).

    Every ``estimate ± z SE`` interval of geoclf (areas, accuracies) takes its ``z`` from here, so that a
    level asked for is the level reported.
    """
    if not 0 < confidence < 1:
        raise InputError(f"the confidence level must be between 0 and 1, not {confidence}")
    return float(NormalDist().inv_cdf(0.5 + confidence / 2))


def proportion_interval(successes: int, n: int, confidence: float = 0.95,
                        population: int | None = None) -> tuple[float, float]:
    """A proportion estimated from a simple random sample and the half-width of its confidence interval.

    The same estimator as a user's accuracy in :func:`olofsson` (a stratum is a simple random sample):
    ``p = successes / n`` with ``V(p) = f p (1 - p) / (n - 1)``, ``f = 1 - n/N`` the finite population
    correction when the population size ``N`` is given (else 1). Use it for an accuracy measured on a set
    of chips taken as a random sample of the map (for example the overall accuracy of the validation chips).

    Args:
        successes: units in the class (correctly classified units).
        n: sample size.
        confidence: level of the interval.
        population: number of units the sample was drawn from, if known.

    Returns:
        ``(p, z * SE)``; the half-width is NaN when ``n`` is 0, or 1 without a census, since the variance
        cannot be estimated then; ``p`` is NaN when ``n`` is 0.
    """
    if n < 0 or successes < 0 or successes > n:
        raise InputError(f"{successes} successes in a sample of {n} units is not a proportion")
    if population is not None and population < n:
        raise InputError(f"a sample of {n} units cannot come from a population of {population}")
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    f = 1.0 - n / population if population else 1.0
    if f <= 0:
        return p, 0.0
    if n == 1:
        return p, math.nan
    return p, z_value(confidence) * math.sqrt(f * p * (1 - p) / (n - 1))


# --------------------------------------------------------------------------------------------------------
# Sample design: size, allocation, drawing chips
# --------------------------------------------------------------------------------------------------------

def sample_size(weights: Mapping[str, float] | pd.Series, users_accuracy: Mapping[str, float] | pd.Series,
                target_se: float = 0.01) -> int:
    """Total sample size for a target standard error of overall accuracy (Olofsson et al. 2014, eq. 13).

    Cochran's (1977) formula for stratified random sampling: ``n = (sum_i W_i S_i / S(O))²`` with
    ``S_i = sqrt(U_i (1 - U_i))``, the standard deviation of stratum ``i`` given the user's accuracy ``U_i``
    one expects (from a pilot or experience). The paper uses ``S(O) = 0.01``.

    Args:
        weights: mapped area (or its proportion) per map class; normalised here.
        users_accuracy: the expected user's accuracy per map class, in ``[0, 1]``.
        target_se: the standard error of overall accuracy to reach.

    Returns:
        The sample size, rounded up.
    """
    w = pd.Series(weights, dtype=float)
    u = pd.Series(users_accuracy, dtype=float)
    if target_se <= 0:
        raise InputError(f"the target standard error must be positive, not {target_se}")
    if set(w.index) != set(u.index):
        raise InputError(f"weights are given for {sorted(w.index)} but expected accuracies for {sorted(u.index)}")
    if (w < 0).any() or w.sum() <= 0 or ((u < 0) | (u > 1)).any():
        raise InputError("weights must be non-negative (not all zero) and accuracies between 0 and 1")
    w = w / w.sum()
    spread = float((w * np.sqrt(u[w.index] * (1 - u[w.index]))).sum())
    # The tiny epsilon keeps an exact integer (a spread that divides evenly) from rounding up one unit.
    return math.ceil((spread / target_se) ** 2 - 1e-9)


def allocate(strata_sizes: Mapping[str, int] | pd.Series, n: int, allocation: str = "proportional",
             min_per_stratum: int = 0) -> pd.Series:
    """How many sample units to draw from each stratum.

    ``proportional`` gives each stratum a share of ``n`` proportional to its size (its mapped area);
    ``equal`` the same number to each. Olofsson et al. (2014) recommend neither outright:
    proportional allocation leaves rare classes -- change classes above all -- with too few units to
    estimate their user's accuracy, and equal allocation inflates the standard errors of area and overall
    accuracy. Their compromise is to move proportional allocation towards equal allocation by giving the
    small strata a floor of about 50-100 units (``min_per_stratum``) and sharing the rest in proportion.

    Shares are rounded with the largest-remainder method so that they add up to ``n``. No stratum gets more
    units than it has; what it cannot take goes to the others.

    Args:
        strata_sizes: number of chips (or area) of each stratum.
        n: total sample size.
        allocation: ``"proportional"`` or ``"equal"``.
        min_per_stratum: floor per stratum (capped at the stratum's size).

    Returns:
        Sample size per stratum (int), in the order of ``strata_sizes``.
    """
    sizes = pd.Series(strata_sizes, dtype=float)
    if allocation not in ALLOCATIONS:
        raise InputError(f"unknown allocation {allocation!r}; use one of {', '.join(ALLOCATIONS)} or give a "
                         "sample size per stratum")
    if n < 0 or min_per_stratum < 0:
        raise InputError("sample sizes must not be negative")
    if (sizes < 0).any():
        raise InputError("strata sizes must not be negative")
    capacity = sizes.apply(math.floor).astype(np.int64)
    n = int(min(n, capacity.sum()))
    floor = np.minimum(capacity, min_per_stratum)
    if floor.sum() > n:
        raise InputError(f"a floor of {min_per_stratum} per stratum needs {int(floor.sum())} units, more than "
                         f"the sample size {n}")
    fixed = pd.Series(0, index=sizes.index, dtype=np.int64)
    is_fixed = pd.Series(False, index=sizes.index)
    # Fix the strata that hit their floor or their size, then share what is left among the others, until
    # the allocation is stable (at most one pass per stratum).
    for _ in range(len(sizes) + 1):
        free = ~is_fixed & (sizes > 0)
        left = n - int(fixed[is_fixed].sum())
        base = sizes[free] if allocation == "proportional" else pd.Series(1.0, index=sizes.index[free])
        share = _largest_remainder(base, left) if len(base) and base.sum() > 0 else base.astype(np.int64)
        too_few = share.index[share < floor[share.index]]
        too_many = share.index[share > capacity[share.index]]
        if not len(too_few) and not len(too_many):
            fixed[share.index] = share
            break
        fixed[too_few] = floor[too_few]
        fixed[too_many] = capacity[too_many]
        is_fixed[too_few.union(too_many)] = True
    return fixed.astype(np.int64)


def _largest_remainder(weights: pd.Series, n: int) -> pd.Series:
    """Integer shares of ``n`` proportional to ``weights`` that add up to ``n`` (Hamilton's method)."""
    exact = weights / weights.sum() * n
    share = np.floor(exact).astype(np.int64)
    rest = int(n - share.sum())
    if rest > 0:
        # Ties broken by position, so the result does not depend on the sort's stability.
        order = sorted(range(len(exact)), key=lambda k: (-(exact.iloc[k] - share.iloc[k]), k))
        for k in order[:rest]:
            share.iloc[k] += 1
    return share


def stratified_sample(predictions: gpd.GeoDataFrame, n: int | Mapping[str, int],
                      allocation: str = "proportional", strata_column: str = "pred", min_per_stratum: int = 0,
                      seed: int = 0) -> gpd.GeoDataFrame:
    """A seeded stratified random sample of chips to label, for :func:`olofsson`.

    Each stratum (value of ``strata_column``: the predicted class, or a change class ``Forest→Developed``)
    is sampled at random without replacement. For a good design follow Olofsson et al. (2014): choose the
    total size with :func:`sample_size`, then allocate it proportionally with a floor of 50-100 units per
    rare stratum (``min_per_stratum``); see :func:`allocate`.

    Every stratum gets at least two units (or all its chips, a census, when it has fewer): a stratum of a
    single sampled unit out of several has no variance estimate, and :func:`olofsson` refuses it. A total
    ``n`` too small for that is refused; sizes given per stratum that leave a stratum with fewer than two
    units of its chips are drawn as asked, with a warning.

    Args:
        predictions: one row per chip (a predictions table or an aligned change table).
        n: total sample size, or the size wanted in each stratum (``{stratum: n_h}``).
        allocation: ``"proportional"`` (to the number of chips, which is the mapped area on a chip grid)
            or ``"equal"``; ignored when ``n`` is a mapping.
        strata_column: the column holding each chip's stratum.
        min_per_stratum: floor per stratum, see :func:`allocate`; never below :data:`MIN_PER_STRATUM`.
        seed: seed of the random draw; the same inputs and seed give the same sample.

    Returns:
        The sampled rows with extra columns ``sample_id`` (0..n-1), ``stratum``, ``stratum_chips`` (chips in
        the stratum), ``sample_weight`` (chips each sampled chip stands for) and an empty ``reference``
        column for the interpreter's label.
    """
    if strata_column not in predictions.columns:
        columns = ", ".join(map(str, predictions.columns))
        raise InputError(f"no column {strata_column!r} to stratify by (columns: {columns})")
    strata = predictions[strata_column]
    if strata.isna().all():
        raise InputError(f"column {strata_column!r} is empty; nothing to stratify")
    sizes = strata.dropna().astype(str).value_counts().sort_index()
    if isinstance(n, Mapping):
        unknown = sorted(set(map(str, n)) - set(sizes.index))
        if unknown:
            raise InputError(f"sample sizes given for strata {unknown} that have no chips")
        per_stratum = pd.Series({s: int(n.get(s, 0)) for s in sizes.index}, dtype=np.int64)
        if (per_stratum < 0).any():
            raise InputError("sample sizes must not be negative")
        per_stratum = np.minimum(per_stratum, sizes)
        thin = [s for s in sizes.index if per_stratum[s] < min(MIN_PER_STRATUM, sizes[s])]
        if thin:
            warnings.warn(f"strata {thin} get fewer than {MIN_PER_STRATUM} sample units (and are not sampled in "
                          "full): their area and accuracy cannot be estimated with a confidence interval",
                          stacklevel=2)
    else:
        floor = max(int(min_per_stratum), MIN_PER_STRATUM)
        needed = int(np.minimum(sizes, floor).sum())
        if int(n) < needed:
            raise InputError(f"a sample of {int(n)} chips cannot give each of the {len(sizes)} strata the "
                             f"{floor} units (or all its chips) that its variance needs; draw at least {needed}")
        per_stratum = allocate(sizes, int(n), allocation, floor)
    rng = np.random.default_rng(seed)
    positions = []
    labels = strata.map(lambda v: None if pd.isna(v) else str(v))
    for stratum in sizes.index:  # sorted, so the draw does not depend on row order of first appearance
        members = np.flatnonzero((labels == stratum).to_numpy())
        take = int(per_stratum[stratum])
        if take:
            positions.append(np.sort(rng.choice(members, size=take, replace=False)))
    chosen = np.concatenate(positions) if positions else np.empty(0, dtype=np.int64)
    sample = predictions.iloc[chosen].copy()
    sample["stratum"] = labels.iloc[chosen].to_numpy()
    sample["stratum_chips"] = sample["stratum"].map(sizes).astype(np.int64)
    sample["sample_weight"] = sample["stratum_chips"] / sample["stratum"].map(per_stratum).astype(float)
    sample["reference"] = pd.Series([None] * len(sample), index=sample.index, dtype=object)
    sample.insert(0, "sample_id", np.arange(len(sample), dtype=np.int64))
    return sample.reset_index(drop=True)


# --------------------------------------------------------------------------------------------------------
# Chip areas
# --------------------------------------------------------------------------------------------------------

def equal_area_crs(gdf: gpd.GeoDataFrame) -> CRS:
    """A Lambert azimuthal equal-area CRS centred on the data, in metres.

    Equal-area everywhere, so areas and overlaps computed in it are true ground areas wherever the data
    lie (NAIP covers several UTM zones, and Alaska/Hawaii fall outside CONUS Albers).
    """
    if gdf.crs is None:
        raise InputError("the table's geometry has no CRS")
    lon, lat = _centre_lonlat(gdf)
    return CRS.from_proj4(f"+proj=laea +lat_0={lat:.6f} +lon_0={lon:.6f} +x_0=0 +y_0=0 +datum=WGS84 +units=m")


@functools.lru_cache(maxsize=64)
def _transformer(source: str, target: str) -> Transformer:
    # building one costs 0.1-0.3 s (PROJ's database): once per pair of CRSes in a process, not once per block
    return Transformer.from_crs(CRS.from_user_input(source), CRS.from_user_input(target), always_xy=True)


def _crs_key(crs: object) -> str:
    return crs.to_wkt() if hasattr(crs, "to_wkt") else CRS.from_user_input(crs).to_wkt()


def reproject(geometry: gpd.GeoSeries, crs: object) -> np.ndarray:
    """The geometries in ``crs`` (shapely's array), with a transformer kept per pair of CRSes in this process:
    what :meth:`geopandas.GeoSeries.to_crs` does, without building a transformer on every call."""
    if geometry.crs is None:
        raise InputError("the table's geometry has no CRS")
    transformer = _transformer(_crs_key(geometry.crs), _crs_key(crs))

    def move(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(np.asarray(geometry.array), move)


def _centre_lonlat(gdf: gpd.GeoDataFrame) -> tuple[float, float]:
    # Only the bounding box is reprojected: a county's worth of chips need not be transformed to find it.
    bounds = shapely.total_bounds(reproject(gpd.GeoSeries([box(*gdf.total_bounds)], crs=gdf.crs), "EPSG:4326"))
    return float((bounds[0] + bounds[2]) / 2), float((bounds[1] + bounds[3]) / 2)


def chip_area_km2(gdf: gpd.GeoDataFrame, crs: object = None) -> pd.Series:
    """Ground area each chip stands for, in km².

    A chip stands for its grid cell's share of the ground: with a stride smaller than the chip size,
    neighbouring chips overlap and each one represents a ``stride x stride`` square (one pixel of the
    land-use map). The footprint's area is measured in an equal-area CRS and scaled by
    ``(stride / size)²`` read from the ``cell`` key; chips without a readable key count their whole
    footprint.

    Args:
        gdf: chips with footprints (and ``cell`` keys).
        crs: the equal-area CRS to measure in (default: :func:`equal_area_crs` of the chips). The blocks of
            one area pass the area's own, so that every block measures in one CRS (and reprojects with one
            transformer per worker).
    """
    if gdf.geometry is None or gdf.crs is None:
        raise InputError("the table's geometry has no CRS; chip areas need footprints")
    area = shapely.area(reproject(gdf.geometry, crs if crs is not None else equal_area_crs(gdf))) / 1e6
    scale = np.ones(len(gdf))
    if "cell" in gdf.columns:
        ratio = _stride_ratio(gdf["cell"])
        ok = np.isfinite(ratio) & (ratio > 0) & (ratio < 1)
        scale[ok] = ratio[ok] ** 2
    return pd.Series(area * scale, index=gdf.index, name="area_km2")


def _stride_ratio(cells: pd.Series) -> np.ndarray:
    """``stride / size`` of each grid cell key, as :func:`tiling.grid.parse_cell` reads them (NaN where it
    cannot). Keys of five parts are split by Arrow and each distinct ``size:stride`` pair parsed once (the
    keys of a block share one): every scored block measures its chips, and parsing every key whole took
    more than half of that."""
    try:
        keys = pa.array(cells, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        keys = None
    if keys is not None and (pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type)) \
            and len(keys) and not keys.null_count:
        parts = pc.split_pattern(keys, ":", max_splits=4, reverse=True)
        if pc.min(pc.list_value_length(parts)).as_py() == 5:  # <crs>:<size>:<stride>:<ix>:<iy>, as parse_cell
            pairs = pc.dictionary_encode(pc.binary_join_element_wise(
                pc.list_element(parts, 1), pc.list_element(parts, 2), pa.scalar(":", keys.type)))
            size, stride = zip(*(pair.split(":") for pair in pairs.dictionary.to_pylist()), strict=True)
            ratio = (pd.to_numeric(pd.Series(stride, dtype="str"), errors="coerce")
                     / pd.to_numeric(pd.Series(size, dtype="str"), errors="coerce")).to_numpy(dtype=float)
            return ratio[pairs.indices.to_numpy(zero_copy_only=False)]
    parsed = parse_cell(cells)
    return (parsed["stride"] / parsed["size"]).to_numpy(dtype=float)


def mapped_area(predictions: gpd.GeoDataFrame, column: str = "pred") -> pd.Series:
    """The map's area of each class (km²): the ``mapped_area`` that :func:`olofsson` needs.

    Args:
        predictions: one row per chip with footprints.
        column: the class column (``pred``, or a change class column).
    """
    if column not in predictions.columns:
        raise InputError(f"no column {column!r} in the table")
    area = chip_area_km2(predictions)
    return area.groupby(predictions[column].astype(str)).sum().rename("mapped_area")
