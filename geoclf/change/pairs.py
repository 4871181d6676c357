"""Chips of two dates paired over the same ground: pairing, change labels, ranking.

The unit of analysis is the chip of the *after* date. Each is paired with the before-date chip of the same
place (:func:`align_dates`), and every summary (:mod:`geoclf.change.summaries`) is computed over those
pairs, so both dates are compared over exactly the same ground. Predictions are read and checked by
:mod:`geoclf.landuse` (:func:`geoclf.landuse.read_predictions`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geoclf.area import chip_area_km2, equal_area_crs
from geoclf.landuse import PROB_PREFIX, prediction_classes
from tiling.errors import InputError
from tiling.grid import parse_cell

PathLike = str | os.PathLike[str]

#: Separator of transition labels: ``"Forest→Developed"``.
ARROW = "→"
#: Prefix of the label of chips whose class did not change: ``"Stable Forest"``.
STABLE = "Stable "
#: Default minimum share of an after-chip's footprint that its before-chip must cover to pair them.
MIN_OVERLAP = 0.5

# Per-date columns carried into the aligned table (suffixed ``_before`` / ``_after``) when present.
_CARRIED = ("chip_id", "scene", "source", "date", "model", "label")


def align_dates(before: gpd.GeoDataFrame, after: gpd.GeoDataFrame,
                min_overlap: float = MIN_OVERLAP) -> gpd.GeoDataFrame:
    """Pair each after-date chip with the before-date chip of the same place.

    The rule:

    1. Within a date, a grid cell predicted twice (neighbouring scenes overlap) keeps its most confident
       prediction (highest probability of the predicted class).
    2. Same grid: an after-chip whose ``cell`` key (``<crs>:<size>:<stride>:<ix>:<iy>``) the before date
       also has is paired with that before-chip.
    3. Different grids (other scenes, a few metres' shift between NAIP years, another CRS, no ``cell``
       key): any other after-chip is paired by footprint overlap, measured in a common equal-area CRS,
       with the before-chip covering the largest part of it, provided that part is at least
       ``min_overlap`` (default 50%) of the after-chip's area. Only before-chips on *other* grids than the
       after-chip's are candidates: on a strided grid a neighbouring cell of the same grid overlaps by
       half and must not stand in for a missing cell. Several after-chips may pair with one before-chip
       when the after grid is finer.

    After-chips left unpaired (no before data there) are dropped and counted in
    ``aligned.attrs["geoclf_change"]``.

    Args:
        before: predictions of the earlier date.
        after: predictions of the later date.
        min_overlap: least share of an after-chip that its before-chip must cover (rule 3).

    Returns:
        A GeoDataFrame, one row per pair, with the after-chip's footprint (in the after table's CRS) and
        columns ``cell`` (the after-chip's), ``match`` (``"cell"`` or ``"overlap"``), ``overlap``,
        ``area_km2`` (ground area the after-chip stands for), ``pred_before``, ``pred_after``,
        ``class_before``, ``class_after`` (the classes compared: a ``class`` column, as
        :func:`smooth_predictions` adds, else ``pred``),
        ``prob_<Class>_before``, ``prob_<Class>_after`` and, when present, ``chip_id``, ``scene``,
        ``source``, ``date``, ``model`` and ``label`` of both dates with the same suffixes.

    Raises:
        InputError: the dates were scored with different class sets, lack footprints, or do not overlap.
    """
    aligned, _, _ = pair_dates(before, after, min_overlap)
    if not len(aligned):
        raise InputError(f"the before and after predictions do not overlap (before covers {_bounds_text(before)}, "
                         f"after covers {_bounds_text(after)}); compare two dates of the same area")
    return aligned


def pair_dates(before: gpd.GeoDataFrame, after: gpd.GeoDataFrame, min_overlap: float = MIN_OVERLAP,
               area_crs: object = None) -> tuple[gpd.GeoDataFrame, np.ndarray, np.ndarray]:
    """:func:`align_dates` that may pair nothing: the pairs, the index label of each pair's before row, and the
    index labels of the before rows compared (those with a prediction, one per cell).

    What :mod:`geoclf.change.partitioned` calls on one after-date partition and the before-date partitions
    around it: a partition with no before data is no error there, and the before rows' labels tell which
    before chips any partition paired (``unpaired_before`` over the whole area). ``area_crs`` is the
    equal-area CRS that areas and overlaps are measured in (default: one centred on ``after``); the
    partitions of one area pass the area's, so that they measure as the whole table would.
    """
    classes_before = prediction_classes(before, "before")
    classes_after = prediction_classes(after, "after")
    if set(classes_before) != set(classes_after):
        raise InputError(f"the two dates were scored with different class sets (before: {classes_before}; "
                         f"after: {classes_after}); compare predictions of models with the same classes")
    if not 0 < min_overlap <= 1:
        raise InputError(f"the minimum overlap must be in (0, 1], not {min_overlap}")
    classes = classes_before
    # Chips without a prediction (all nodata) have no class to compare.
    b, dropped_b, b_labels = _one_per_cell(before[before["pred"].notna()], classes)
    a, dropped_a, _ = _one_per_cell(after[after["pred"].notna()], classes)
    b_cells = _cells(b)
    a_cells = _cells(a)
    shared = set(b_cells["grid"].dropna()) & set(a_cells["grid"].dropna())
    on_shared = a_cells["grid"].isin(shared).to_numpy()

    pairs_a: list[np.ndarray] = []
    pairs_b: list[np.ndarray] = []
    overlap: list[np.ndarray] = []
    by_cell = np.zeros(len(a), dtype=bool)
    if on_shared.any():
        b_pos = pd.Series(np.arange(len(b)), index=b["cell"].to_numpy())
        a_idx = np.flatnonzero(on_shared)
        hit = a.iloc[a_idx]["cell"].map(b_pos)
        keep = hit.notna().to_numpy()
        pairs_a.append(a_idx[keep])
        pairs_b.append(hit[keep].to_numpy(dtype=np.int64))
        overlap.append(np.ones(int(keep.sum())))
        by_cell[a_idx[keep]] = True
    # Everything else goes by footprint, each after-chip against the before-chips on grids other than its
    # own: a chip on a shared grid whose cell the before date lacks may still be covered by a before-chip of
    # another grid (across a UTM zone boundary), never by a neighbouring cell of its own grid.
    rest = ~by_cell
    a_grid = a_cells["grid"].astype(object).where(a_cells["grid"].notna(), None).to_numpy()
    b_grid = b_cells["grid"].astype(object).where(b_cells["grid"].notna(), None).to_numpy()
    for grid in pd.unique(a_grid[rest]):
        a_idx = np.flatnonzero(rest & (a_grid == grid) if grid is not None else rest & pd.isna(a_grid))
        b_idx = np.flatnonzero(b_grid != grid) if grid is not None else np.arange(len(b))
        if not len(a_idx) or not len(b_idx):
            continue
        ia, ib, frac = _match_by_overlap(b.iloc[b_idx], a.iloc[a_idx], min_overlap, area_crs)
        pairs_a.append(a_idx[ia])
        pairs_b.append(b_idx[ib])
        overlap.append(frac)
    ia = np.concatenate(pairs_a) if pairs_a else np.empty(0, dtype=np.int64)
    ib = np.concatenate(pairs_b) if pairs_b else np.empty(0, dtype=np.int64)
    order = np.argsort(ia, kind="stable")
    ia, ib = ia[order], ib[order]
    frac = np.concatenate(overlap)[order] if overlap else np.empty(0)

    after_rows = a.iloc[ia]
    before_rows = b.iloc[ib]
    out = pd.DataFrame(index=pd.RangeIndex(len(ia)))
    out["cell"] = after_rows["cell"].to_numpy() if "cell" in a.columns else None
    out["match"] = np.where(by_cell[ia], "cell", "overlap")
    out["overlap"] = frac
    out["area_km2"] = chip_area_km2(a, area_crs).to_numpy()[ia] if len(ia) else np.empty(0)
    for suffix, rows in (("before", before_rows), ("after", after_rows)):
        out[f"pred_{suffix}"] = rows["pred"].astype(str).to_numpy()
    # The classes compared: a date's smoothed ``class`` (smooth_predictions) when present, else its ``pred``.
    for suffix, rows in (("before", before_rows), ("after", after_rows)):
        chosen = rows["class"] if "class" in rows.columns else rows["pred"]
        out[f"class_{suffix}"] = chosen.astype(str).to_numpy()
    for suffix, rows in (("before", before_rows), ("after", after_rows)):
        for name in classes:
            out[f"{PROB_PREFIX}{name}_{suffix}"] = rows[f"{PROB_PREFIX}{name}"].to_numpy()
        for column in _CARRIED:
            if column in rows.columns:
                out[f"{column}_{suffix}"] = rows[column].to_numpy()
    aligned = gpd.GeoDataFrame(out, geometry=after_rows.geometry.to_numpy(), crs=after.crs)
    aligned.attrs["geoclf_change"] = {
        "classes": list(classes),
        "before_chips": len(before), "after_chips": len(after),
        "duplicate_cells_dropped": {"before": dropped_b, "after": dropped_a},
        "paired": len(aligned), "paired_by_cell": int((out["match"] == "cell").sum()),
        "unpaired_after": int(len(a) - len(aligned)),
        "unpaired_before": int(len(b) - len(np.unique(ib))),
        "min_overlap": float(min_overlap),
    }
    return aligned, b_labels[ib], b_labels


def _one_per_cell(predictions: gpd.GeoDataFrame,
                  classes: Sequence[str]) -> tuple[gpd.GeoDataFrame, int, np.ndarray]:
    """Keep the most confident prediction of each cell; returns the table, how many rows were dropped and the
    index labels the kept rows had."""
    if "cell" not in predictions.columns or not predictions["cell"].duplicated().any():
        return predictions.reset_index(drop=True), 0, predictions.index.to_numpy()
    confidence = _class_probability(predictions, predictions["pred"].astype(str), classes, "")
    ranked = predictions.assign(_confidence=confidence).sort_values("_confidence", ascending=False, kind="stable")
    kept = ranked[~ranked["cell"].duplicated() | ranked["cell"].isna()].drop(columns="_confidence").sort_index()
    return kept.reset_index(drop=True), int(len(predictions) - len(kept)), kept.index.to_numpy()


def _cells(predictions: gpd.GeoDataFrame) -> pd.DataFrame:
    if "cell" in predictions.columns:
        return parse_cell(predictions["cell"])
    return pd.DataFrame({"grid": [None] * len(predictions)}, index=predictions.index)


def _match_by_overlap(before: gpd.GeoDataFrame, after: gpd.GeoDataFrame, min_overlap: float,
                      crs: object = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (in ``after``, in ``before``) and overlap shares of after-chips paired by footprint."""
    crs = equal_area_crs(after) if crs is None else crs
    a_geom = after.geometry.to_crs(crs).to_numpy()
    b_all = before.geometry.to_crs(crs)
    tree = shapely.STRtree(b_all.to_numpy())
    ia, ib = tree.query(a_geom, predicate="intersects")
    if not len(ia):
        return ia, ib, np.empty(0)
    shared = shapely.area(shapely.intersection(a_geom[ia], b_all.to_numpy()[ib]))
    frac = shared / shapely.area(a_geom[ia])
    # Best before-chip per after-chip: sort by (after, -share, before) and keep the first of each after-chip;
    # an equal share goes to the first before-chip of the table, not to whichever the tree returned first
    # (its order depends on what else the tree holds: a partition's neighbourhood or the whole area).
    order = np.lexsort((ib, -frac, ia))
    ia, ib, frac = ia[order], ib[order], frac[order]
    first = np.r_[True, ia[1:] != ia[:-1]]
    ia, ib, frac = ia[first], ib[first], frac[first]
    keep = frac >= min_overlap - 1e-9
    return ia[keep], ib[keep], np.minimum(frac[keep], 1.0)


def _bounds_text(gdf: gpd.GeoDataFrame) -> str:
    left, bottom, right, top = gdf.total_bounds
    return f"{left:.0f},{bottom:.0f},{right:.0f},{top:.0f} in {gdf.crs.to_string()}"


def _class_probability(table: pd.DataFrame, chosen: pd.Series, classes: Sequence[str], suffix: str) -> np.ndarray:
    """Each row's probability of the class in ``chosen`` (NaN where the class has no column)."""
    probs = np.column_stack([table[f"{PROB_PREFIX}{c}{suffix}"].to_numpy(dtype=float) for c in classes])
    index = pd.Categorical(chosen.astype(str), categories=list(classes)).codes
    out = np.full(len(table), np.nan)
    ok = index >= 0
    out[ok] = probs[np.flatnonzero(ok), index[ok]]
    return out


def aligned_classes(aligned: pd.DataFrame, classes: Sequence[str] | None = None) -> list[str]:
    """The class list of an aligned table (kept by :func:`align_dates`), or ``classes`` when given."""
    if classes is not None:
        return [str(c) for c in classes]
    recorded = aligned.attrs.get("geoclf_change", {}).get("classes")
    if recorded:
        return list(recorded)
    suffix = "_before"
    found = [c[len(PROB_PREFIX):-len(suffix)] for c in aligned.columns
             if str(c).startswith(PROB_PREFIX) and str(c).endswith(suffix)]
    if not found:
        raise InputError("the table has no prob_<class>_before columns; make it with align_dates")
    return found


def change_labels(aligned: pd.DataFrame) -> pd.Series:
    """Each pair's change class: ``"Forest→Developed"``, or ``"Stable Forest"`` when unchanged.

    These are the strata of a change map, for :func:`geoclf.area.stratified_sample` and
    :func:`geoclf.change.summaries.reference_estimates`.
    """
    return label_changes(aligned["class_before"], aligned["class_after"]).rename("change")


def label_changes(before: pd.Series, after: pd.Series) -> pd.Series:
    """The change class of each pair of labels: ``"Forest→Developed"``, or ``"Stable Forest"``."""
    before, after = before.astype(str), after.astype(str)
    return pd.Series(np.where(before == after, STABLE + before, before + ARROW + after), index=before.index)


def rank_changes(aligned: pd.DataFrame, classes: Sequence[str] | None = None) -> gpd.GeoDataFrame:
    """The changed chips, likeliest real changes first.

    ``confidence`` is the product of the before model's probability of the before class and the after
    model's probability of the after class: the chance that both labels, hence the change, are right if the
    two dates' errors are independent. Reviewers working down the list see confident changes first and
    doubtful ones (most of which are one date's error) last.

    Returns:
        Changed pairs only, sorted by ``confidence`` (ties by cell), with ``rank`` (1 = most confident),
        ``transition``, ``confidence``, ``prob_before``, ``prob_after`` and all columns of ``aligned``.
    """
    classes = aligned_classes(aligned, classes)
    changed = aligned[aligned["class_before"].astype(str) != aligned["class_after"].astype(str)].copy()
    p_before = _class_probability(changed, changed["class_before"], classes, "_before")
    p_after = _class_probability(changed, changed["class_after"], classes, "_after")
    changed["transition"] = label_changes(changed["class_before"], changed["class_after"]).to_numpy()
    changed["prob_before"] = p_before
    changed["prob_after"] = p_after
    changed["confidence"] = p_before * p_after
    tie = changed["cell"].astype(str) if "cell" in changed.columns else pd.Series("", index=changed.index)
    changed = changed.assign(_tie=tie).sort_values(["confidence", "_tie"], ascending=[False, True],
                                                   na_position="last", kind="stable").drop(columns="_tie")
    changed.insert(0, "rank", np.arange(1, len(changed) + 1, dtype=np.int64))
    return changed.reset_index(drop=True)


def date_label(aligned: pd.DataFrame, which: str) -> str:
    """A short name of one date for titles: its year(s) from the ``date_<which>`` column, else the word."""
    column = f"date_{which}"
    if column in aligned.columns and aligned[column].notna().any():
        years = sorted({pd.Timestamp(d).year for d in aligned[column].dropna()})
        return str(years[0]) if len(years) == 1 else f"{years[0]}-{years[-1]}"
    return which
