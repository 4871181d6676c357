"""Trends of area series: a Theil–Sen slope per class (or zone and class) with Sen's confidence interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from tiling.errors import InputError


def theil_sen(t: Sequence[float], y: Sequence[float], confidence: float = 0.95) -> dict[str, float]:
    """Theil–Sen slope of ``y`` over ``t`` with Sen's (1968) rank-based confidence interval.

    Why this estimator: a classified area series has outlier years -- imagery flown in another season, a
    radiometric seam, another model -- which pull a least-squares line wherever they fall. The Theil–Sen
    slope (the median of all pairwise slopes) ignores up to 29% of wild points, and its interval comes from
    the distribution of Kendall's S under no trend, so it assumes neither normal nor equal errors. The
    interval runs between the pairwise slopes of ranks ``(N - C)/2`` and ``(N + C)/2 + 1`` (``N`` slopes,
    ``C = z sqrt(Var S)`` with the tie correction), both rounded outwards, so that the interval covers at
    least the level asked for; ``scipy.stats.theilslopes``, which gives the slope and intercept here, rounds
    them to the nearest rank instead, and its interval can fall short of that level.

    With few dates the interval is the whole range of the pairwise slopes (always so with five dates or
    fewer at 95%), and its coverage is then ``1 - 2/n!`` for an untied series: 67%, 92% and 98% with three,
    four and five dates. ``ci_level`` reports that figure, else the requested confidence; four dates cannot
    give a 95% interval at all.

    Returns:
        ``n``, ``slope``, ``intercept`` (at ``t = 0``, through the medians), ``low``, ``high``, ``ci_level``,
        ``tau`` and ``p_value`` (Kendall's tau of ``y`` with ``t``, i.e. the Mann–Kendall test). With fewer
        than three points the interval and the test are NaN.
    """
    t = np.asarray(t, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y)
    t, y = t[keep], y[keep]
    n = len(t)
    nan = float("nan")
    out = {"n": n, "slope": nan, "intercept": nan, "low": nan, "high": nan, "ci_level": nan, "tau": nan,
           "p_value": nan}
    if n < 2:
        return out
    i, j = np.triu_indices(n, k=1)
    run = t[j] - t[i]
    slopes = np.sort((y[j] - y[i])[run != 0] / run[run != 0])
    if not len(slopes):  # a single time
        return out
    fit = stats.theilslopes(y, t, confidence, method="separate")  # the intercept through the medians
    out["slope"], out["intercept"] = float(fit.slope), float(fit.intercept)
    if n < 3:
        return out
    _, tie_counts = np.unique(y, return_counts=True)
    var_s = (n * (n - 1) * (2 * n + 5) - sum(k * (k - 1) * (2 * k + 5) for k in tie_counts)) / 18.0
    big_n = len(slopes)
    c = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(max(var_s, 0.0))
    lo = max(0, math.floor((big_n - c) / 2) - 1)  # rank (N - C)/2, 1-based, rounded down
    hi = min(big_n - 1, math.ceil((big_n + c) / 2))  # rank (N + C)/2 + 1, 1-based, rounded up
    out["low"], out["high"] = float(slopes[lo]), float(slopes[hi])
    out["ci_level"] = 1.0 - 2.0 / math.factorial(n) if (lo == 0 and hi == big_n - 1) else confidence
    if np.ptp(y) > 0:
        result = stats.kendalltau(t, y)
        out["tau"], out["p_value"] = float(result.statistic), float(result.pvalue)
    return out


def trend_label(low: float, high: float) -> str:
    """``increasing``/``decreasing`` when the interval excludes zero, ``no trend`` when it holds it."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "too few dates"
    if low > 0:
        return "increasing"
    if high < 0:
        return "decreasing"
    return "no trend"


def class_trends(areas: pd.DataFrame, *, value: str = "km2", by: Sequence[str] = ("class",),
                 confidence: float = 0.95) -> pd.DataFrame:
    """Theil–Sen trend of ``value`` over time in each group (class; or zone and class).

    Args:
        areas: a long table with ``decimal_year`` and ``value`` (from :func:`class_areas`,
            :func:`zonal_areas`, or :func:`reference_areas` with ``value="area_km2"`` once ``decimal_year``
            is joined).
        value: the column to trend.
        by: the grouping columns.
        confidence: level of the slope's interval.

    Returns:
        One row per group: the group columns, ``n_dates``, ``first``, ``last`` (values at the first and last
        date), ``mean``, ``slope`` (per year), ``slope_low``, ``slope_high``, ``ci_level``,
        ``slope_pct_per_year`` (of the mean), ``tau``, ``p_value``, ``trend`` (see :func:`trend_label`: the
        direction the interval shows, at its coverage ``ci_level``) and ``significant``: the trend holds at the
        level asked for, ``confidence`` -- the interval excludes zero *and* covers at least that level. With
        four dates or fewer the interval cannot reach 95% (its coverage is 92% with four), so no trend of so
        short a series is significant at 95%, whatever its direction; ``p_value`` (Mann-Kendall) tells the
        same at that level.
    """
    missing = [c for c in ("decimal_year", value, *by) if c not in areas.columns]
    if missing:
        raise InputError(f"the area table lacks column(s) {missing}")
    rows = []
    for key, part in areas.sort_values("decimal_year", kind="stable").groupby(list(by), sort=False):
        fit = theil_sen(part["decimal_year"], part[value], confidence)
        values = part[value].to_numpy(dtype=float)
        mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key, strict=True)), "n_dates": fit["n"], "first": values[0], "last": values[-1],
                     "mean": mean, "slope": fit["slope"], "slope_low": fit["low"], "slope_high": fit["high"],
                     "ci_level": fit["ci_level"],
                     "slope_pct_per_year": 100 * fit["slope"] / mean if mean else float("nan"),
                     "tau": fit["tau"], "p_value": fit["p_value"],
                     "trend": trend_label(fit["low"], fit["high"])})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    # The interval's own coverage must reach the level: a 92% interval of four dates excluding zero is no
    # trend at 95% (the Mann-Kendall p of such a series is above 0.05 too).
    reached = table["ci_level"].to_numpy(dtype=float) >= confidence - 1e-9
    table["significant"] = table["trend"].isin(["increasing", "decreasing"]).to_numpy() & reached
    return table


