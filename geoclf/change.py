"""Land-use change between two dates: chips paired across dates, transitions, gains and losses, zones.

The unit of analysis is the chip of the *after* date. Each is paired with the before-date chip of the same
place (:func:`align_dates`), and every summary -- the transition matrix, areas per class and year, gross
gains and losses, the urbanization figures, zonal summaries -- is computed over those pairs, so both dates
are compared over exactly the same ground.

Areas are ground areas in km² (see :func:`geoclf.area.chip_area_km2`): the footprint measured in an
equal-area CRS, so dates delivered in different CRSs add up alike.

Counted areas are *mapped* areas and inherit the maps' errors; change is hit twice, since a wrong label on
either date makes a transition. For areas with confidence intervals, label a stratified sample of chips
(:func:`geoclf.area.stratified_sample` on :func:`change_labels`) and use :func:`reference_estimates`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from rasterio.crs import CRS

from geoclf.area import AreaEstimate, chip_area_km2, equal_area_crs, error_matrix, olofsson
from geoclf.zones import DEVELOPED, checked_zone_names, read_reference, read_zones, zone_names
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.grid import parse_cell

if TYPE_CHECKING:
    from geoclf.maps import LandUseGrid

#: Separator of transition labels: ``"Forest→Developed"``.
ARROW = "→"
#: Prefix of the label of chips whose class did not change: ``"Stable Forest"``.
STABLE = "Stable "
#: Default minimum share of an after-chip's footprint that its before-chip must cover to pair them.
MIN_OVERLAP = 0.5

_PROB = "prob_"
# Per-date columns carried into the aligned table (suffixed ``_before`` / ``_after``) when present.
_CARRIED = ("chip_id", "scene", "source", "date", "model", "label")

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------------------
# Reading and checking predictions
# --------------------------------------------------------------------------------------------------------

def read_predictions(path: PathLike) -> gpd.GeoDataFrame:
    """Read a predictions table: a score output directory (``DIR/predictions.parquet``) or the file itself.

    Raises:
        InputError: the file is missing, is not GeoParquet with footprints, or lacks ``pred``/``prob_*``.
    """
    path = Path(path)
    file = path / "predictions.parquet" if path.is_dir() else path
    if not file.exists():
        raise InputError("no predictions.parquet here (give a `geoclf score` output directory or the file)"
                         if path.is_dir() else "no such file", file)
    try:
        gdf = gpd.read_parquet(file)
    except ValueError as exc:  # geopandas' message for Parquet without geometry metadata
        raise InputError(f"has no geometry, so chips cannot be placed ({_first_line(exc)}); predictions must be "
                         "GeoParquet with chip footprints", file) from exc
    except Exception as exc:
        raise InputError(f"cannot be read as GeoParquet ({_first_line(exc)})", file) from exc
    prediction_classes(gdf, name=str(file))
    return gdf


def prediction_classes(predictions: pd.DataFrame, name: str | None = None) -> list[str]:
    """The classes a predictions table was scored with, in the model's order (from its ``prob_*`` columns).

    Also checks what change analysis relies on: footprints with a CRS, a ``pred`` column, and predicted
    classes that are among the scored ones.
    """
    if not isinstance(predictions, gpd.GeoDataFrame) or predictions.geometry.name not in predictions.columns:
        raise InputError("predictions without geometry: chip footprints are needed to compare dates", name)
    if predictions.crs is None:
        raise InputError("the chip footprints have no CRS", name)
    if "pred" not in predictions.columns:
        raise InputError("no 'pred' column; is this a geoclf predictions table?", name)
    classes = [str(c)[len(_PROB):] for c in predictions.columns if str(c).startswith(_PROB)]
    if not classes:
        raise InputError("no prob_<class> columns; is this a geoclf predictions table?", name)
    unknown = sorted(set(predictions["pred"].dropna().astype(str)) - set(classes))
    if unknown:
        raise InputError(f"predicted classes {unknown} have no probability column", name)
    return classes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --------------------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------------------

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
    classes_before = prediction_classes(before, "before")
    classes_after = prediction_classes(after, "after")
    if set(classes_before) != set(classes_after):
        raise InputError(f"the two dates were scored with different class sets (before: {classes_before}; "
                         f"after: {classes_after}); compare predictions of models with the same classes")
    if not 0 < min_overlap <= 1:
        raise InputError(f"the minimum overlap must be in (0, 1], not {min_overlap}")
    classes = classes_before
    # Chips without a prediction (all nodata) have no class to compare.
    b, dropped_b = _one_per_cell(before[before["pred"].notna()], classes)
    a, dropped_a = _one_per_cell(after[after["pred"].notna()], classes)
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
        ia, ib, frac = _match_by_overlap(b.iloc[b_idx], a.iloc[a_idx], min_overlap)
        pairs_a.append(a_idx[ia])
        pairs_b.append(b_idx[ib])
        overlap.append(frac)
    ia = np.concatenate(pairs_a) if pairs_a else np.empty(0, dtype=np.int64)
    ib = np.concatenate(pairs_b) if pairs_b else np.empty(0, dtype=np.int64)
    if not len(ia):
        raise InputError(f"the before and after predictions do not overlap (before covers {_bounds_text(b)}, "
                         f"after covers {_bounds_text(a)}); compare two dates of the same area")
    order = np.argsort(ia, kind="stable")
    ia, ib = ia[order], ib[order]
    frac = np.concatenate(overlap)[order]

    after_rows = a.iloc[ia]
    before_rows = b.iloc[ib]
    out = pd.DataFrame(index=pd.RangeIndex(len(ia)))
    out["cell"] = after_rows["cell"].to_numpy() if "cell" in a.columns else None
    out["match"] = np.where(by_cell[ia], "cell", "overlap")
    out["overlap"] = frac
    out["area_km2"] = chip_area_km2(a).to_numpy()[ia]
    for suffix, rows in (("before", before_rows), ("after", after_rows)):
        out[f"pred_{suffix}"] = rows["pred"].astype(str).to_numpy()
    # The classes compared: a date's smoothed ``class`` (smooth_predictions) when present, else its ``pred``.
    for suffix, rows in (("before", before_rows), ("after", after_rows)):
        chosen = rows["class"] if "class" in rows.columns else rows["pred"]
        out[f"class_{suffix}"] = chosen.astype(str).to_numpy()
    for suffix, rows in (("before", before_rows), ("after", after_rows)):
        for name in classes:
            out[f"{_PROB}{name}_{suffix}"] = rows[f"{_PROB}{name}"].to_numpy()
        for column in _CARRIED:
            if column in rows.columns:
                out[f"{column}_{suffix}"] = rows[column].to_numpy()
    aligned = gpd.GeoDataFrame(out, geometry=after_rows.geometry.to_numpy(), crs=a.crs)
    aligned.attrs["geoclf_change"] = {
        "classes": list(classes),
        "before_chips": len(before), "after_chips": len(after),
        "duplicate_cells_dropped": {"before": dropped_b, "after": dropped_a},
        "paired": len(aligned), "paired_by_cell": int((out["match"] == "cell").sum()),
        "unpaired_after": int(len(a) - len(aligned)),
        "unpaired_before": int(len(b) - len(np.unique(ib))),
        "min_overlap": float(min_overlap),
    }
    return aligned


def _one_per_cell(predictions: gpd.GeoDataFrame, classes: Sequence[str]) -> tuple[gpd.GeoDataFrame, int]:
    """Keep the most confident prediction of each cell; returns the table and how many rows were dropped."""
    if "cell" not in predictions.columns or not predictions["cell"].duplicated().any():
        return predictions.reset_index(drop=True), 0
    confidence = _class_probability(predictions, predictions["pred"].astype(str), classes, "")
    ranked = predictions.assign(_confidence=confidence).sort_values("_confidence", ascending=False, kind="stable")
    kept = ranked[~ranked["cell"].duplicated() | ranked["cell"].isna()].drop(columns="_confidence").sort_index()
    return kept.reset_index(drop=True), int(len(predictions) - len(kept))


def _cells(predictions: gpd.GeoDataFrame) -> pd.DataFrame:
    if "cell" in predictions.columns:
        return parse_cell(predictions["cell"])
    return pd.DataFrame({"grid": [None] * len(predictions)}, index=predictions.index)


def _match_by_overlap(before: gpd.GeoDataFrame, after: gpd.GeoDataFrame,
                      min_overlap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions (in ``after``, in ``before``) and overlap shares of after-chips paired by footprint."""
    crs = equal_area_crs(after)
    a_geom = after.geometry.to_crs(crs).to_numpy()
    b_all = before.geometry.to_crs(crs)
    tree = shapely.STRtree(b_all.to_numpy())
    ia, ib = tree.query(a_geom, predicate="intersects")
    if not len(ia):
        return ia, ib, np.empty(0)
    shared = shapely.area(shapely.intersection(a_geom[ia], b_all.to_numpy()[ib]))
    frac = shared / shapely.area(a_geom[ia])
    # Best before-chip per after-chip: sort by (after, -share) and keep the first of each after-chip.
    order = np.lexsort((-frac, ia))
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
    probs = np.column_stack([table[f"{_PROB}{c}{suffix}"].to_numpy(dtype=float) for c in classes])
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
    found = [c[len(_PROB):-len(suffix)] for c in aligned.columns
             if str(c).startswith(_PROB) and str(c).endswith(suffix)]
    if not found:
        raise InputError("the table has no prob_<class>_before columns; make it with align_dates")
    return found


# --------------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------------

def transition_matrix(aligned: pd.DataFrame, classes: Sequence[str] | None = None, unit: str = "km2") -> pd.DataFrame:
    """From-class (rows, before) x to-class (columns, after), in km² (``unit="km2"``) or chips.

    The diagonal holds persistence; the matrix sums to the compared area (or number of paired chips).
    """
    classes = aligned_classes(aligned, classes)
    if unit not in ("km2", "chips"):
        raise InputError(f"unknown unit {unit!r}; use 'km2' or 'chips'")
    values = aligned["area_km2"].to_numpy(dtype=float) if unit == "km2" else np.ones(len(aligned))
    i = _codes(aligned["class_before"], classes)
    j = _codes(aligned["class_after"], classes)
    matrix = np.zeros((len(classes), len(classes)))
    np.add.at(matrix, (i, j), values)
    table = pd.DataFrame(matrix, index=pd.Index(classes, name="before"), columns=pd.Index(classes, name="after"))
    return table.astype(np.int64) if unit == "chips" else table


def transitions_long(aligned: pd.DataFrame, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Every from -> to pair with its chips and km² (the ``transitions.csv`` layout)."""
    km2 = transition_matrix(aligned, classes, "km2").stack().rename("km2")
    chips = transition_matrix(aligned, classes, "chips").stack().rename("chips")
    table = pd.concat([chips, km2], axis=1).reset_index()
    table.columns = ["from_class", "to_class", "chips", "km2"]
    table["changed"] = table["from_class"] != table["to_class"]
    return table


def class_areas(aligned: pd.DataFrame, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Area of each class in each year over the compared area: chips and km², before and after."""
    classes = aligned_classes(aligned, classes)
    km2 = transition_matrix(aligned, classes, "km2")
    chips = transition_matrix(aligned, classes, "chips")
    table = pd.DataFrame({"before_chips": chips.sum(axis=1).to_numpy(), "after_chips": chips.sum(axis=0).to_numpy(),
                          "before_km2": km2.sum(axis=1).to_numpy(), "after_km2": km2.sum(axis=0).to_numpy()},
                         index=pd.Index(classes, name="class"))
    return table


def gains_losses(aligned: pd.DataFrame, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Gross gain, gross loss and net change of each class, in km².

    ``gain`` is area that became the class, ``loss`` area that was the class and became another,
    ``net = gain - loss = after - before``; ``net_pct`` is relative to the before area.
    """
    km2 = transition_matrix(aligned, classes, "km2")
    kept = np.diag(km2.to_numpy())
    before = km2.sum(axis=1).to_numpy()
    after = km2.sum(axis=0).to_numpy()
    table = pd.DataFrame({"before_km2": before, "after_km2": after, "persistence_km2": kept,
                          "gain_km2": after - kept, "loss_km2": before - kept}, index=km2.index.rename("class"))
    table["net_km2"] = table["gain_km2"] - table["loss_km2"]
    with np.errstate(divide="ignore", invalid="ignore"):
        table["net_pct"] = np.where(before > 0, 100 * table["net_km2"] / before, np.nan)
    return table


def urbanization(aligned: pd.DataFrame, classes: Sequence[str] | None = None,
                 developed: str = DEVELOPED) -> pd.DataFrame:
    """Conversions of every other class to ``developed``.

    Returns:
        One row per source class and a ``Total`` row: ``chips`` and ``km2`` converted to developed,
        ``pct_of_class`` (share of the class's before area that was developed) and
        ``pct_of_new_developed`` (share of all newly developed area that came from the class).
    """
    classes = aligned_classes(aligned, classes)
    if developed not in classes:
        raise InputError(f"no class named {developed!r} among {classes}; name the developed class")
    km2 = transition_matrix(aligned, classes, "km2")
    chips = transition_matrix(aligned, classes, "chips")
    sources = [c for c in classes if c != developed]
    table = pd.DataFrame({"chips": chips.loc[sources, developed].to_numpy(),
                          "km2": km2.loc[sources, developed].to_numpy(),
                          "before_km2": km2.loc[sources].sum(axis=1).to_numpy()}, index=pd.Index(sources, name="from"))
    table.loc["Total"] = table.sum()
    table["chips"] = table["chips"].astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        table["pct_of_class"] = np.where(table["before_km2"] > 0, 100 * table["km2"] / table["before_km2"], np.nan)
        new = table.loc["Total", "km2"]
        table["pct_of_new_developed"] = 100 * table["km2"] / new if new > 0 else np.nan
    return table.drop(columns="before_km2")


def change_labels(aligned: pd.DataFrame) -> pd.Series:
    """Each pair's change class: ``"Forest→Developed"``, or ``"Stable Forest"`` when unchanged.

    These are the strata of a change map, for :func:`geoclf.area.stratified_sample` and
    :func:`reference_estimates`.
    """
    return _change_label(aligned["class_before"], aligned["class_after"]).rename("change")


def _change_label(before: pd.Series, after: pd.Series) -> pd.Series:
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
    changed["transition"] = _change_label(changed["class_before"], changed["class_after"]).to_numpy()
    changed["prob_before"] = p_before
    changed["prob_after"] = p_after
    changed["confidence"] = p_before * p_after
    tie = changed["cell"].astype(str) if "cell" in changed.columns else pd.Series("", index=changed.index)
    changed = changed.assign(_tie=tie).sort_values(["confidence", "_tie"], ascending=[False, True],
                                                   na_position="last", kind="stable").drop(columns="_tie")
    changed.insert(0, "rank", np.arange(1, len(changed) + 1, dtype=np.int64))
    return changed.reset_index(drop=True)


def _codes(values: pd.Series, classes: Sequence[str]) -> np.ndarray:
    codes = pd.Categorical(values.astype(str), categories=list(classes)).codes
    if (codes < 0).any():
        unknown = sorted(set(values.astype(str)) - set(classes))
        raise InputError(f"classes {unknown} are not among {list(classes)}")
    return codes


# --------------------------------------------------------------------------------------------------------
# Zones
# --------------------------------------------------------------------------------------------------------

def zonal_summary(aligned: gpd.GeoDataFrame, zones: gpd.GeoDataFrame, classes: Sequence[str] | None = None,
                  zone_column: str | None = None, developed: str = DEVELOPED) -> pd.DataFrame:
    """Area per class per year and change, per zone (town, tract, watershed...).

    Zones in another CRS are reprojected to the chips' CRS. A chip counts, whole, in every zone that holds
    its centre: the same rule as one land-use map pixel per chip, and no chip is split or counted twice
    within a zone.

    Args:
        aligned: pairs from :func:`align_dates`.
        zones: polygons; their CRS must be set.
        classes: class order (default: the aligned table's).
        zone_column: the column naming each zone (default: see :func:`geoclf.zones.zone_names`).
        developed: the class whose gains are reported as ``to_<developed>_km2``.

    Returns:
        One row per zone (every zone, chips or not): ``chips``, ``area_km2``, ``changed_km2``,
        ``before_km2_<Class>``, ``after_km2_<Class>``, ``net_km2_<Class>`` and, when the class exists,
        ``to_<developed>_km2``.
    """
    classes = aligned_classes(aligned, classes)
    names = checked_zone_names(zones, zone_column)
    if aligned.crs is None:
        raise InputError("the chips have no CRS")
    zones = zones.to_crs(aligned.crs) if not zones.crs.equals(aligned.crs) else zones
    centres = gpd.GeoDataFrame({"_row": np.arange(len(aligned))}, geometry=aligned.geometry.centroid.to_numpy(),
                               crs=aligned.crs)
    polygons = gpd.GeoDataFrame({"zone": names.to_numpy()}, geometry=zones.geometry.to_numpy(), crs=aligned.crs)
    hits = gpd.sjoin(centres, polygons, predicate="within", how="inner")
    rows = aligned.iloc[hits["_row"].to_numpy()]
    zone = pd.Series(hits["zone"].to_numpy(), index=rows.index, name="zone")
    area = rows["area_km2"].astype(float)
    table = pd.DataFrame(index=pd.Index(names.tolist(), name="zone"))
    table["chips"] = zone.value_counts().reindex(table.index, fill_value=0).astype(np.int64)
    table["area_km2"] = area.groupby(zone.to_numpy()).sum().reindex(table.index, fill_value=0.0)
    changed = rows["class_before"].astype(str) != rows["class_after"].astype(str)
    table["changed_km2"] = area[changed].groupby(zone[changed].to_numpy()).sum().reindex(table.index, fill_value=0.0)
    for name in classes:
        was = rows["class_before"].astype(str) == name
        now = rows["class_after"].astype(str) == name
        before = area[was].groupby(zone[was].to_numpy()).sum().reindex(table.index, fill_value=0.0)
        after = area[now].groupby(zone[now].to_numpy()).sum().reindex(table.index, fill_value=0.0)
        table[f"before_km2_{name}"] = before
        table[f"after_km2_{name}"] = after
        table[f"net_km2_{name}"] = after - before
    if developed in classes:
        became = (rows["class_after"].astype(str) == developed) & (rows["class_before"].astype(str) != developed)
        table[f"to_{developed}_km2"] = area[became].groupby(zone[became].to_numpy()).sum().reindex(
            table.index, fill_value=0.0)
    return table


# --------------------------------------------------------------------------------------------------------
# Reference sample: error-adjusted areas
# --------------------------------------------------------------------------------------------------------

def match_reference(aligned: gpd.GeoDataFrame, reference: gpd.GeoDataFrame | pd.DataFrame) -> pd.DataFrame:
    """Find the aligned pair of each reference sample unit.

    Units are matched by ``cell`` when the reference has that column (a sample drawn from the aligned
    table), otherwise by location: the pair whose footprint holds the unit's point (a polygon's
    representative point), the nearest chip centre winning when strided chips overlap.

    Returns:
        The reference rows that fall on the compared area, with ``_pair`` (row position in ``aligned``).

    Raises:
        InputError: no reference unit falls on the compared area.
    """
    if "cell" in reference.columns and "cell" in aligned.columns and reference["cell"].notna().any():
        pos = pd.Series(np.arange(len(aligned)), index=aligned["cell"].astype(str).to_numpy())
        pos = pos[~pos.index.duplicated()]
        pair = reference["cell"].astype(str).map(pos)
        matched = reference[pair.notna()].assign(_pair=pair[pair.notna()].astype(np.int64))
    elif isinstance(reference, gpd.GeoDataFrame) and reference.crs is not None:
        points = reference.geometry.to_crs(aligned.crs).representative_point()
        found = gpd.sjoin(gpd.GeoDataFrame({"_ref": np.arange(len(reference))}, geometry=points.to_numpy(),
                                           crs=aligned.crs),
                          gpd.GeoDataFrame({"_pair": np.arange(len(aligned))}, geometry=aligned.geometry.to_numpy(),
                                           crs=aligned.crs), predicate="within", how="inner")
        if len(found):
            centres = aligned.geometry.centroid.to_numpy()[found["_pair"].to_numpy()]
            found["_dist"] = shapely.distance(found.geometry.to_numpy(), centres)
            found = found.sort_values(["_ref", "_dist"]).drop_duplicates("_ref")
        matched = reference.iloc[found["_ref"].to_numpy()].assign(_pair=found["_pair"].to_numpy())
    else:
        raise InputError("the reference sample has neither a 'cell' column nor geometry with a CRS")
    if matched.empty:
        raise InputError("the reference sample does not intersect the compared area: none of its "
                         f"{len(reference)} units falls on a chip of both dates")
    return matched


def reference_estimates(aligned: gpd.GeoDataFrame, reference: gpd.GeoDataFrame | pd.DataFrame,
                        classes: Sequence[str] | None = None, z: float = 1.96) -> dict[str, AreaEstimate]:
    """Error-adjusted areas (km²) with confidence intervals from a labelled reference sample.

    The reference table holds one row per sample unit with either

    - ``reference``: the true change class (``"Forest→Developed"``, ``"Stable Forest"``), as an interpreter
      fills it in a sample from :func:`geoclf.area.stratified_sample` on :func:`change_labels`; or
    - ``reference_before`` and/or ``reference_after``: the true land-use class at each date.

    The map strata are the change classes (and each date's classes) of the aligned table, and the mapped
    areas their km² over the compared area. The estimators assume the sample was stratified by those
    classes (or simple random); see :mod:`geoclf.area`.

    Returns:
        ``{"change": ..., "before": ..., "after": ...}``, whichever the reference's columns allow.
    """
    classes = aligned_classes(aligned, classes)
    matched = match_reference(aligned, reference)
    pairs = aligned.iloc[matched["_pair"].to_numpy()]
    area = aligned["area_km2"].astype(float)
    results: dict[str, AreaEstimate] = {}
    truth_change = None
    if "reference" in matched.columns and matched["reference"].notna().any():
        truth_change = matched["reference"]
    elif {"reference_before", "reference_after"} <= set(matched.columns):
        both = matched["reference_before"].notna() & matched["reference_after"].notna()
        truth_change = pd.Series(None, index=matched.index, dtype=object)
        truth_change[both] = _change_label(matched.loc[both, "reference_before"],
                                           matched.loc[both, "reference_after"]).to_numpy()
    if truth_change is not None:
        mapped = change_labels(aligned)
        strata = sorted(set(mapped) | set(truth_change.dropna().astype(str)))
        counts = error_matrix(change_labels(pairs).to_numpy(), truth_change.to_numpy(), strata)
        results["change"] = olofsson(counts, area.groupby(mapped.to_numpy()).sum(), z=z, unit="km²")
    for date in ("before", "after"):
        column = f"reference_{date}"
        if column in matched.columns and matched[column].notna().any():
            counts = error_matrix(pairs[f"class_{date}"].to_numpy(), matched[column].to_numpy(), classes)
            mapped = area.groupby(aligned[f"class_{date}"].astype(str).to_numpy()).sum()
            results[date] = olofsson(counts, mapped, z=z, unit="km²")
    if not results:
        raise InputError("the reference sample has no labels: fill 'reference' (change class) or "
                         "'reference_before'/'reference_after' (land-use classes)")
    return results


# --------------------------------------------------------------------------------------------------------
# Smoothing and rasters (on geoclf.maps)
# --------------------------------------------------------------------------------------------------------

def smooth_predictions(predictions: gpd.GeoDataFrame, scheme: ClassScheme, size: int = 3) -> gpd.GeoDataFrame:
    """A copy of one date's predictions with a ``class`` column smoothed by a plurality filter.

    The predictions are rasterized on their chip grid (one pixel per chip, :func:`geoclf.maps.predictions_to_grid`)
    and filtered with :func:`geoclf.maps.smooth_plurality` (``size`` x ``size``, 3 by default), which removes
    isolated single-chip labels: most of them are classifier noise, and every one would otherwise make two
    spurious transitions. The price: real patches smaller than about five chips vanish too, and edges of
    patches can move by a chip, so smoothing trades small real changes for fewer false ones. ``pred`` is
    kept; :func:`align_dates` compares ``class`` when it is present.
    """
    from geoclf import maps

    grid = maps.predictions_to_grid(_grid_table(predictions), scheme)
    codes = maps.smooth_plurality(grid.codes, size)
    code = _sample_grid(predictions, grid._replace(codes=codes))
    names = np.array(scheme.names, dtype=object)
    smoothed = predictions.copy()
    smoothed["class"] = np.where(code > 0, names[np.maximum(code, 1) - 1], predictions["pred"].astype(str))
    return smoothed


def _grid_table(table: pd.DataFrame, pred: str = "pred") -> pd.DataFrame:
    """The columns :func:`geoclf.maps.predictions_to_grid` needs, derived from the ``cell`` keys."""
    if "cell" not in table.columns or table["cell"].isna().any():
        raise InputError("chips without 'cell' keys cannot be placed on a chip grid")
    cells = parse_cell(table["cell"])
    if cells["grid"].isna().any():
        raise InputError("malformed 'cell' keys; expected <crs>:<size>:<stride>:<ix>:<iy>")
    frame = pd.DataFrame({"cell": table["cell"].to_numpy(), "ix": cells["ix"].astype(np.int64).to_numpy(),
                          "iy": cells["iy"].astype(np.int64).to_numpy(), "crs": cells["grid_crs"].to_numpy(),
                          "pred": table[pred].astype(str).to_numpy()})
    for column in table.columns:
        if str(column).startswith(_PROB) and not str(column).endswith(("_before", "_after")):
            frame[column] = table[column].to_numpy()
    return frame


def _sample_grid(table: pd.DataFrame, grid: LandUseGrid) -> np.ndarray:
    """The grid's code under each chip: at the centre of the chip's stride square, the pixel it became."""
    from pyproj import Transformer

    cells = parse_cell(table["cell"])
    x = (cells["ix"] + 0.5) * cells["stride"]
    y = (cells["iy"] + 0.5) * cells["stride"]
    # Writable copies: pandas may hand out read-only views, and the points are reprojected in place.
    x, y = x.to_numpy(dtype=float, copy=True), y.to_numpy(dtype=float, copy=True)
    for crs_text in cells["grid_crs"].unique():
        rows = (cells["grid_crs"] == crs_text).to_numpy()
        if CRS.from_user_input(crs_text) != grid.crs:
            transformer = Transformer.from_crs(crs_text, grid.crs, always_xy=True)
            x[rows], y[rows] = transformer.transform(x[rows], y[rows])
    col, row = ~grid.transform * (x, y)
    col, row = np.floor(col).astype(np.int64), np.floor(row).astype(np.int64)
    height, width = grid.codes.shape
    inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
    out = np.zeros(len(table), dtype=np.int64)
    out[inside] = grid.codes[row[inside], col[inside]]
    return out


class _Legend:
    """Names and colours of raster codes that are not land-use classes (transitions), for geoclf.maps.

    It offers what the map writers read from a :class:`~tiling.classes.ClassScheme`: ``names`` (code
    ``i + 1`` is ``names[i]``), ``color(name)`` and ``to_dict()``.
    """

    def __init__(self, names: Sequence[str], colors: Sequence[tuple[int, int, int]]) -> None:
        self.names = list(names)
        self.colors = dict(zip(self.names, (tuple(int(v) for v in c) for c in colors), strict=True))

    def color(self, name: str) -> tuple[int, int, int]:
        return self.colors[name]

    def to_dict(self) -> dict[str, list[int]]:
        return {name: [] for name in self.names}


def _tint(rgb: tuple[int, int, int], amount: float = 0.65) -> tuple[int, int, int]:
    """The colour mixed with white: stable land stays recognisable but steps back behind change."""
    return tuple(round(v + (255 - v) * amount) for v in rgb)  # type: ignore[return-value]


def transition_legend(scheme: ClassScheme) -> _Legend:
    """The codes of ``change.tif``: ``from_index * C + to_index + 1`` (0-based class indices, C classes).

    Stable transitions (``"Stable Forest"``) are drawn in a pale tint of the class colour, changes in the
    colour of the class they became.
    """
    names, colors = [], []
    for a in scheme.names:
        for b in scheme.names:
            names.append(STABLE + a if a == b else a + ARROW + b)
            colors.append(_tint(scheme.color(a)) if a == b else scheme.color(b))
    return _Legend(names, colors)


def _display_legend(scheme: ClassScheme) -> _Legend:
    """A short legend for maps: no change, or the class the land became."""
    names = ["No change"] + [f"Became {name}" for name in scheme.names]
    return _Legend(names, [(225, 225, 225)] + [scheme.color(name) for name in scheme.names])


def change_grids(aligned: pd.DataFrame, scheme: ClassScheme) -> dict[str, LandUseGrid]:
    """The compared area on the after-date chip grid: ``before`` and ``after`` classes, ``transition`` codes
    (see :func:`transition_legend`) and ``display`` codes (0 nodata, 1 no change, ``1 + k`` became class k).
    """
    from geoclf import maps

    before = maps.predictions_to_grid(_grid_table(aligned, "class_before"), scheme)
    after = maps.predictions_to_grid(_grid_table(aligned, "class_after"), scheme)
    b = before.codes.astype(np.int64)
    a = after.codes.astype(np.int64)
    both = (b > 0) & (a > 0)
    n = len(scheme.names)
    transition = np.where(both, (b - 1) * n + a, 0).astype(np.uint8 if n * n < 256 else np.uint16)
    display = np.where(both, np.where(a == b, 1, a + 1), 0).astype(np.uint8)
    return {"before": before, "after": after, "transition": after._replace(codes=transition),
            "display": after._replace(codes=display)}


def write_change_cog(path: PathLike, aligned: pd.DataFrame, scheme: ClassScheme) -> Path:
    """Write ``change.tif``: a COG on the chip grid coding each chip's from -> to transition.

    Code ``from_index * C + to_index + 1`` (0 nodata), with a colour table and the transition names in the
    ``CLASS_NAMES`` tag, as in ``landuse.tif``.
    """
    from geoclf import maps

    if len(scheme.names) ** 2 > 255:
        raise InputError(f"{len(scheme.names)} classes make more transitions than an 8-bit colour table holds")
    grid = change_grids(aligned, scheme)["transition"]
    return maps.write_landuse_cog(path, grid, transition_legend(scheme))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Figures, maps, image pairs
# --------------------------------------------------------------------------------------------------------

def date_label(aligned: pd.DataFrame, which: str) -> str:
    """A short name of one date for titles: its year(s) from the ``date_<which>`` column, else the word."""
    column = f"date_{which}"
    if column in aligned.columns and aligned[column].notna().any():
        years = sorted({pd.Timestamp(d).year for d in aligned[column].dropna()})
        return str(years[0]) if len(years) == 1 else f"{years[0]}-{years[-1]}"
    return which


def area_bar_chart(areas: pd.DataFrame, path: PathLike, labels: tuple[str, str] = ("before", "after")) -> Path:
    """Bar chart of area (km²) per class, one bar per date, from :func:`class_areas`."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.2), layout="constrained")
    axes = figure.add_subplot()
    x = np.arange(len(areas))
    axes.bar(x - 0.2, areas["before_km2"], width=0.4, label=labels[0], color="#9aa5b1")
    axes.bar(x + 0.2, areas["after_km2"], width=0.4, label=labels[1], color="#c0392b")
    axes.set_xticks(x, [str(c) for c in areas.index], rotation=20, ha="right")
    axes.set_ylabel("area (km²)")
    axes.set_title("Mapped area by class and year")
    axes.legend(frameon=False)
    axes.grid(axis="y", alpha=0.3)
    path = Path(path)
    figure.savefig(path, dpi=120, format="png")
    return path


def change_html(aligned: gpd.GeoDataFrame, scheme: ClassScheme, path: PathLike, ranked: pd.DataFrame | None = None,
                max_popup_chips: int = 2000, overlay_max_pixels: int = 2048) -> Path:
    """Write an interactive folium map: both dates' land use, the change layer and the ranked changed chips.

    Layers are switched in the layer control; changed chips (up to ``max_popup_chips``, likeliest first)
    open a popup with the transition, its rank and confidence. Leaflet is inlined (as in the land-use
    map), so only the basemap needs a network.
    """
    import folium

    from geoclf import maps

    grids = change_grids(aligned, scheme)
    labels = (date_label(aligned, "before"), date_label(aligned, "after"))
    overlays = [(f"Land use {labels[0]}", grids["before"], scheme, False),
                (f"Land use {labels[1]}", grids["after"], scheme, False),
                (f"Change {labels[0]} → {labels[1]}", grids["display"], _display_legend(scheme), True)]
    images = [(name, *maps.overlay_image(grid, legend, overlay_max_pixels), show)
              for name, grid, legend, show in overlays]
    bounds = images[0][2]
    fmap = maps.offline_map(bounds, "OpenStreetMap")
    root = fmap.get_root()
    for name, url, image_bounds, show in images:
        folium.raster_layers.ImageOverlay(url, bounds=image_bounds, opacity=0.75, name=name, pixelated=True,
                                          interactive=False, show=show).add_to(fmap)
    ranked = rank_changes(aligned, scheme.names) if ranked is None else ranked
    if len(ranked):
        top = ranked.head(max_popup_chips)
        props = pd.DataFrame({"rank": top["rank"].to_numpy(), "transition": top["transition"].to_numpy(),
                              "confidence": np.round(top["confidence"].to_numpy(dtype=float), 3),
                              "p_before": np.round(top["prob_before"].to_numpy(dtype=float), 3),
                              "p_after": np.round(top["prob_after"].to_numpy(dtype=float), 3)})
        for column in ("chip_id_before", "chip_id_after"):
            if column in top.columns:
                props[column] = top[column].astype(str).to_numpy()
        data = gpd.GeoDataFrame(props, geometry=top.geometry.to_crs(4326).to_numpy(), crs=4326).to_json(drop_id=True)
        folium.GeoJson(data, name=f"Changed chips (top {len(top)}, click for details)",
                       style_function=lambda feature: {"color": "#000000", "weight": 1, "fillOpacity": 0.0},
                       highlight_function=lambda feature: {"weight": 3},
                       popup=folium.GeoJsonPopup(fields=list(props.columns))).add_to(fmap)
    folium.LayerControl(collapsed=False).add_to(fmap)
    root.html.add_child(folium.Element(maps.legend_html(_display_legend(scheme), "Change", None)), name="legend")
    fmap.fit_bounds(bounds)
    path = Path(path)
    fmap.save(str(path))
    return path


def write_image_pairs(ranked: gpd.GeoDataFrame, out_dir: PathLike, top: int = 20, size: int = 160) -> list[Path]:
    """Before/after RGB image pairs of the ``top`` ranked changes, for reviewers.

    Each pair reads the after-chip's footprint from both dates' source rasters (``source_before``,
    ``source_after``), so the two images show the same ground. Chips whose rasters cannot be read are
    skipped.

    Returns:
        The PNG files written, ``<rank>_<from>_to_<to>.png``.
    """
    from PIL import Image, ImageDraw

    out = Path(out_dir)
    written: list[Path] = []
    if not {"source_before", "source_after"} <= set(ranked.columns) or not len(ranked):
        return written
    out.mkdir(parents=True, exist_ok=True)
    for _, row in ranked.head(top).iterrows():
        footprint = gpd.GeoSeries([row.geometry], crs=ranked.crs)
        tiles = [_read_footprint(row[f"source_{which}"], footprint, size) for which in ("before", "after")]
        if any(t is None for t in tiles):
            continue
        canvas = Image.new("RGB", (2 * size + 6, size + 18), "white")
        for k, (tile, which) in enumerate(zip(tiles, ("before", "after"), strict=True)):
            canvas.paste(Image.fromarray(tile), (k * (size + 6), 18))
            ImageDraw.Draw(canvas).text((k * (size + 6) + 2, 3), f"{which}: {row[f'class_{which}']}", fill="black")
        name = f"{int(row['rank']):04d}_{row['class_before']}_to_{row['class_after']}.png".replace(" ", "_")
        canvas.save(out / name)
        written.append(out / name)
    return written


def _read_footprint(source: object, footprint: gpd.GeoSeries, size: int) -> np.ndarray | None:
    """RGB of a footprint from a raster, resampled to ``size`` pixels, or None if it cannot be read."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError
    from rasterio.windows import from_bounds

    if not isinstance(source, str) or not source:
        return None
    try:
        with rasterio.open(source) as dataset:
            bounds = footprint.to_crs(dataset.crs).total_bounds
            window = from_bounds(*bounds, transform=dataset.transform)
            bands = [1, 2, 3] if dataset.count >= 3 else [1, 1, 1]
            data = dataset.read(bands, window=window, out_shape=(3, size, size), boundless=True, fill_value=0,
                                resampling=Resampling.bilinear)
    except (RasterioError, OSError, ValueError):
        return None
    return np.ascontiguousarray(np.moveaxis(data, 0, -1).astype(np.uint8))


# --------------------------------------------------------------------------------------------------------
# The whole analysis: geoclf change
# --------------------------------------------------------------------------------------------------------

def load_scheme(score_dir: PathLike, classes: Sequence[str]) -> ClassScheme:
    """The class scheme (names, order, colours) of a score output: from its ``landuse.tif`` tags, else the
    default scheme when the classes are its classes."""
    from geoclf import maps

    path = Path(score_dir)
    landuse = path / "landuse.tif" if path.is_dir() else path.with_name("landuse.tif")
    if landuse.exists():
        scheme = maps.read_landuse(landuse)[1]
    else:
        scheme = ClassScheme.default()
        if set(scheme.names) != set(classes):
            raise InputError(f"no landuse.tif to read the class scheme from, and the classes {list(classes)} "
                             "are not the default scheme's", path)
    if set(scheme.names) != set(classes):
        raise InputError(f"landuse.tif has classes {scheme.names} but predictions.parquet has {list(classes)}",
                         landuse)
    return scheme


def run_change(before: PathLike, after: PathLike, out: PathLike, *, zones: PathLike | None = None,
               zone_column: str | None = None, reference: PathLike | None = None, smooth: bool = False,
               min_overlap: float = MIN_OVERLAP, developed: str = DEVELOPED, pairs: int = 0,
               sample_size: int | None = None, min_per_stratum: int = 50, seed: int = 0,
               html_map: bool = True) -> dict[str, Path]:
    """Compare two score outputs and write every change product into ``out``.

    Writes ``transitions.csv`` (from, to, chips, km²), ``classes.csv`` (area per class per year, gains,
    losses, net), ``urbanization.csv`` (when ``developed`` is a class), ``changes.parquet`` (changed chips,
    ranked), ``change.tif`` (transition COG), ``area_by_class.png``, ``change_map.png``, ``change.html``
    (unless ``html_map`` is false), ``report.html`` and ``change.json`` (alignment and headline figures);
    with ``zones``, ``zones.csv``; with ``reference``, ``area_estimates.csv`` and ``accuracy.csv``; with
    ``pairs``, ``pairs/*.png``; with ``sample_size``, ``sample.parquet`` (chips to label, stratified by
    change class, for a later ``reference``).

    Args:
        before: score output directory (or predictions file) of the earlier date.
        after: the same for the later date.
        out: output directory, created if needed.
        zones: polygons (towns, tracts) for zonal summaries, in any CRS.
        zone_column: the zones' name column (default: guessed, see :func:`zonal_summary`).
        reference: a labelled reference sample (see :func:`reference_estimates`).
        smooth: smooth each date with a 3x3 plurality filter before comparing.
        min_overlap: alignment threshold for chips on different grids (see :func:`align_dates`).
        developed: the class whose gains are urbanization.
        pairs: how many top-ranked changes get before/after image pairs.
        sample_size: draw a stratified sample of this many chips to label.
        min_per_stratum: floor per change class in that sample (Olofsson et al. suggest 50-100).
        seed: seed of the sample.
        html_map: write the interactive map (and embed it in the report).

    Returns:
        Output name -> path.
    """
    import json

    from geoclf import maps
    from geoclf.area import stratified_sample

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    before_table = read_predictions(before)
    after_table = read_predictions(after)
    classes = prediction_classes(before_table)
    scheme = load_scheme(before, classes)
    if smooth:
        before_table = smooth_predictions(before_table, scheme)
        after_table = smooth_predictions(after_table, scheme)
    aligned = align_dates(before_table, after_table, min_overlap=min_overlap)
    aligned.attrs["geoclf_change"]["classes"] = list(scheme.names)
    names = scheme.names
    labels = (date_label(aligned, "before"), date_label(aligned, "after"))
    written: dict[str, Path] = {}

    transitions = transitions_long(aligned, names)
    transitions.to_csv(out / "transitions.csv", index=False)
    written["transitions"] = out / "transitions.csv"
    areas = class_areas(aligned, names)
    flows = gains_losses(aligned, names)
    per_class = areas.join(flows.drop(columns=["before_km2", "after_km2"]))
    per_class.to_csv(out / "classes.csv")
    written["classes"] = out / "classes.csv"
    urban = None
    if developed in names:
        urban = urbanization(aligned, names, developed)
        urban.to_csv(out / "urbanization.csv")
        written["urbanization"] = out / "urbanization.csv"
    ranked = rank_changes(aligned, names)
    ranked.to_parquet(out / "changes.parquet", index=False)
    written["changes"] = out / "changes.parquet"
    written["change_tif"] = write_change_cog(out / "change.tif", aligned, scheme)
    written["bar_chart"] = area_bar_chart(areas, out / "area_by_class.png", labels)
    grids = change_grids(aligned, scheme)
    written["change_png"] = maps.static_png(grids["display"], _display_legend(scheme),  # type: ignore[arg-type]
                                            out / "change_map.png", title=f"Change {labels[0]} → {labels[1]}")
    if pairs:
        pair_files = write_image_pairs(ranked, out / "pairs", top=pairs)
        if pair_files:
            written["pairs"] = out / "pairs"
    zone_table = None
    if zones is not None:
        zone_table = zonal_summary(aligned, read_zones(zones), names, zone_column, developed)
        zone_table.to_csv(out / "zones.csv")
        written["zones"] = out / "zones.csv"
    estimates: dict[str, AreaEstimate] = {}
    if reference is not None:
        estimates = reference_estimates(aligned, read_reference(reference), names)
        pd.concat({key: est.area for key, est in estimates.items()}, names=["map"]).to_csv(out / "area_estimates.csv")
        accuracy = pd.concat({key: est.accuracy for key, est in estimates.items()}, names=["map"])
        accuracy.to_csv(out / "accuracy.csv")
        written["area_estimates"] = out / "area_estimates.csv"
        written["accuracy"] = out / "accuracy.csv"
    if sample_size:
        strata = aligned.assign(change=change_labels(aligned))
        sample = stratified_sample(strata, int(sample_size), strata_column="change",
                                   min_per_stratum=min_per_stratum, seed=seed)
        sample.to_parquet(out / "sample.parquet", index=False)
        written["sample"] = out / "sample.parquet"
    if html_map:
        written["html"] = change_html(aligned, scheme, out / "change.html", ranked)

    info = dict(aligned.attrs["geoclf_change"])
    info.update({"before": str(before), "after": str(after), "dates": list(labels), "smoothed": smooth,
                 "compared_km2": float(aligned["area_km2"].sum()),
                 "changed_km2": float(ranked["area_km2"].sum()) if len(ranked) else 0.0,
                 "changed_chips": len(ranked)})
    if urban is not None:
        info["to_developed_km2"] = float(urban.loc["Total", "km2"])
    (out / "change.json").write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
    written["json"] = out / "change.json"
    written["report"] = write_report(out / "report.html", info=info, per_class=per_class,
                                     matrix=transition_matrix(aligned, names), urban=urban, ranked=ranked,
                                     zones=zone_table, estimates=estimates, bar_chart=written["bar_chart"],
                                     change_png=written["change_png"], html_map=written.get("html"))
    return written


def write_report(path: PathLike, *, info: dict, per_class: pd.DataFrame, matrix: pd.DataFrame,
                 urban: pd.DataFrame | None, ranked: pd.DataFrame, zones: pd.DataFrame | None,
                 estimates: dict[str, AreaEstimate], bar_chart: Path, change_png: Path,
                 html_map: Path | None, top: int = 25) -> Path:
    """Write ``report.html``: one self-contained page (figures inlined, the map embedded) of the analysis."""
    import html

    from geoclf.htmlpage import html_table as table
    from geoclf.htmlpage import png_img as image
    from geoclf.htmlpage import write_page

    before, after = info["dates"]
    parts = [f"<h1>Land-use change {html.escape(before)} → {html.escape(after)}</h1>",
             "<p>", f"Before: <code>{html.escape(info['before'])}</code><br>",
             f"After: <code>{html.escape(info['after'])}</code><br>",
             f"Compared area: <b>{info['compared_km2']:,.2f} km²</b> in {info['paired']} chip pairs "
             f"({info['paired_by_cell']} on the same grid cell, {info['paired'] - info['paired_by_cell']} by "
             f"footprint overlap ≥ {info['min_overlap']:.0%}); unpaired chips: {info['unpaired_after']} after, "
             f"{info['unpaired_before']} before.<br>",
             f"Changed: <b>{info['changed_km2']:,.2f} km²</b> ({info['changed_chips']} chips)."
             + (" Each date was smoothed with a 3×3 plurality filter before comparing." if info["smoothed"] else ""),
             "</p>",
             '<p class="note">Areas counted from the maps inherit their errors, and change maps doubly so (an error '
             "on either date makes a transition). Error-adjusted areas with confidence intervals need a labelled "
             "stratified sample (Olofsson et al. 2014); see the <i>Error-adjusted areas</i> section.</p>",
             "<h2>Area by class and year</h2>", image(bar_chart, "area by class and year"), table(per_class),
             "<h2>Transition matrix (km², rows: before, columns: after)</h2>", table(matrix)]
    if urban is not None:
        parts += ["<h2>Urbanization</h2>", table(urban, 2)]
    parts += [f"<h2>Likeliest changes (top {min(top, len(ranked))} of {len(ranked)})</h2>",
              "<p>Confidence is the product of both dates' probabilities of their classes.</p>"]
    if len(ranked):
        shown = [c for c in ("rank", "transition", "confidence", "prob_before", "prob_after", "chip_id_before",
                             "chip_id_after", "area_km2") if c in ranked.columns]
        parts.append(table(pd.DataFrame(ranked[shown].head(top)).set_index("rank")))
    if zones is not None:
        parts += ["<h2>Zones</h2>", table(zones)]
    parts.append("<h2>Error-adjusted areas</h2>")
    if estimates:
        for key, est in estimates.items():
            title = "change classes" if key == "change" else f"land use, {before if key == 'before' else after}"
            parts += [f"<h3>{html.escape(title)}</h3>",
                      f"<p>Overall accuracy {est.overall['accuracy']:.3f} ± {est.overall['ci']:.3f} "
                      f"(95% CI, n = {int(est.overall['n'])}). Areas in {html.escape(est.unit)}.</p>",
                      table(est.summary())]
    else:
        parts.append("<p>No reference sample given. Run with <code>--sample-size</code> to draw chips to label, "
                     "then with <code>--reference</code>.</p>")
    parts += ["<h2>Map</h2>", image(change_png, "change map")]
    if html_map is not None:
        page = html.escape(Path(html_map).read_text(encoding="utf-8"), quote=True)
        parts.append(f'<iframe title="interactive change map" srcdoc="{page}"></iframe>')
    return write_page(path, f"Land-use change {before} → {after}", parts)


__all__ = [
    "ARROW", "DEVELOPED", "MIN_OVERLAP", "STABLE", "align_dates", "aligned_classes", "area_bar_chart",
    "change_grids", "change_html", "change_labels", "class_areas", "date_label", "gains_losses", "load_scheme",
    "match_reference", "prediction_classes", "rank_changes", "read_predictions", "read_reference", "read_zones",
    "reference_estimates", "run_change", "smooth_predictions", "transition_legend", "transition_matrix",
    "transitions_long", "urbanization", "write_change_cog", "write_image_pairs", "write_report", "zonal_summary",
    "zone_names",
]
