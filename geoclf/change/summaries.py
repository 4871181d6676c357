"""Summaries of paired chips: the transition matrix, areas, gains and losses, urbanization, zones, estimates.

Areas are ground areas in km² (see :func:`geoclf.area.chip_area_km2`): the footprint measured in an
equal-area CRS, so dates delivered in different CRSs add up alike.

Counted areas are *mapped* areas and inherit the maps' errors; change is hit twice, since a wrong label on
either date makes a transition. For areas with confidence intervals, label a stratified sample of chips
(:func:`geoclf.area.stratified_sample` on :func:`geoclf.change.pairs.change_labels`) and use
:func:`reference_estimates`.
"""

from __future__ import annotations

from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from geoclf.area import AreaEstimate, error_matrix, olofsson
from geoclf.change.pairs import aligned_classes, change_labels, label_changes
from geoclf.zones import DEVELOPED, checked_zone_names
from tiling.errors import InputError


class TransitionTally:
    """The transition matrix added up over pairs, a table of pairs at a time (a partition of a large area).

    Pairs are added in the order given and each pair's area to its cell of the matrix one after another, so
    adding the partitions of an area in order gives the matrix of the whole table to the last bit. The summary
    functions here (:func:`transition_matrix`, :func:`transitions_long`, :func:`class_areas`,
    :func:`gains_losses`, :func:`urbanization`) take a tally wherever they take an aligned table.
    """

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = [str(c) for c in classes]
        self.km2 = np.zeros((len(self.classes), len(self.classes)))
        self.chips = np.zeros((len(self.classes), len(self.classes)))

    def add(self, aligned: pd.DataFrame) -> TransitionTally:
        """Add the pairs of an aligned table (:func:`geoclf.change.align_dates`); returns the tally."""
        i = _codes(aligned["class_before"], self.classes)
        j = _codes(aligned["class_after"], self.classes)
        np.add.at(self.km2, (i, j), aligned["area_km2"].to_numpy(dtype=float))
        np.add.at(self.chips, (i, j), np.ones(len(aligned)))
        return self

    def matrix(self, unit: str = "km2") -> pd.DataFrame:
        """From-class (rows) x to-class (columns) in km² or chips, as :func:`transition_matrix`."""
        if unit not in ("km2", "chips"):
            raise InputError(f"unknown unit {unit!r}; use 'km2' or 'chips'")
        table = pd.DataFrame(self.km2 if unit == "km2" else self.chips, index=pd.Index(self.classes, name="before"),
                             columns=pd.Index(self.classes, name="after"))
        return table.astype(np.int64) if unit == "chips" else table.copy()


Pairs = pd.DataFrame | TransitionTally


def _classes_of(aligned: Pairs, classes: Sequence[str] | None) -> list[str]:
    if isinstance(aligned, TransitionTally):
        if classes is not None and [str(c) for c in classes] != aligned.classes:
            raise InputError(f"the tally counts classes {aligned.classes}, not {list(classes)}")
        return aligned.classes
    return aligned_classes(aligned, classes)


def transition_matrix(aligned: Pairs, classes: Sequence[str] | None = None, unit: str = "km2") -> pd.DataFrame:
    """From-class (rows, before) x to-class (columns, after), in km² (``unit="km2"``) or chips.

    The diagonal holds persistence; the matrix sums to the compared area (or number of paired chips).
    ``aligned`` is a table of pairs or a :class:`TransitionTally` of them.
    """
    classes = _classes_of(aligned, classes)
    if isinstance(aligned, TransitionTally):
        return aligned.matrix(unit)
    if unit not in ("km2", "chips"):
        raise InputError(f"unknown unit {unit!r}; use 'km2' or 'chips'")
    return TransitionTally(classes).add(aligned).matrix(unit)


def transitions_long(aligned: Pairs, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Every from -> to pair with its chips and km² (the ``transitions.csv`` layout)."""
    km2 = transition_matrix(aligned, classes, "km2").stack().rename("km2")
    chips = transition_matrix(aligned, classes, "chips").stack().rename("chips")
    table = pd.concat([chips, km2], axis=1).reset_index()
    table.columns = ["from_class", "to_class", "chips", "km2"]
    table["changed"] = table["from_class"] != table["to_class"]
    return table


def class_areas(aligned: Pairs, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Area of each class in each year over the compared area: chips and km², before and after."""
    classes = _classes_of(aligned, classes)
    km2 = transition_matrix(aligned, classes, "km2")
    chips = transition_matrix(aligned, classes, "chips")
    table = pd.DataFrame({"before_chips": chips.sum(axis=1).to_numpy(), "after_chips": chips.sum(axis=0).to_numpy(),
                          "before_km2": km2.sum(axis=1).to_numpy(), "after_km2": km2.sum(axis=0).to_numpy()},
                         index=pd.Index(classes, name="class"))
    return table


def gains_losses(aligned: Pairs, classes: Sequence[str] | None = None) -> pd.DataFrame:
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


def urbanization(aligned: Pairs, classes: Sequence[str] | None = None,
                 developed: str = DEVELOPED) -> pd.DataFrame:
    """Conversions of every other class to ``developed``.

    Returns:
        One row per source class and a ``Total`` row: ``chips`` and ``km2`` converted to developed,
        ``pct_of_class`` (share of the class's before area that was developed) and
        ``pct_of_new_developed`` (share of all newly developed area that came from the class).
    """
    classes = _classes_of(aligned, classes)
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


def _codes(values: pd.Series, classes: Sequence[str]) -> np.ndarray:
    codes = pd.Categorical(values.astype(str), categories=list(classes)).codes
    if (codes < 0).any():
        unknown = sorted(set(values.astype(str)) - set(classes))
        raise InputError(f"classes {unknown} are not among {list(classes)}")
    return codes


def zonal_summary(aligned: gpd.GeoDataFrame, zones: gpd.GeoDataFrame, classes: Sequence[str] | None = None,
                  zone_column: str | None = None, developed: str = DEVELOPED) -> pd.DataFrame:
    """Area per class per year and change, per zone (town, tract, watershed...).

    Zones in another CRS are reprojected to the chips' CRS. A chip counts, whole, in every zone that holds
    its centre: the same rule as one land-use map pixel per chip, and no chip is split or counted twice
    within a zone.

    Args:
        aligned: pairs from :func:`geoclf.change.align_dates`.
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
      fills it in a sample from :func:`geoclf.area.stratified_sample` on :func:`geoclf.change.change_labels`; or
    - ``reference_before`` and/or ``reference_after``: the true land-use class at each date.

    The map strata are the change classes (and each date's classes) of the aligned table, the mapped
    areas their km² over the compared area, and their chip counts the strata sizes of the finite population
    correction (a change class sampled in full is exact). The estimators assume the sample was stratified by those
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
        truth_change[both] = label_changes(matched.loc[both, "reference_before"],
                                           matched.loc[both, "reference_after"]).to_numpy()
    if truth_change is not None:
        mapped = change_labels(aligned)
        strata = sorted(set(mapped) | set(truth_change.dropna().astype(str)))
        counts = error_matrix(change_labels(pairs).to_numpy(), truth_change.to_numpy(), strata)
        results["change"] = olofsson(counts, area.groupby(mapped.to_numpy()).sum(), z=z, unit="km²",
                                     population=mapped.value_counts())
    for date in ("before", "after"):
        column = f"reference_{date}"
        if column in matched.columns and matched[column].notna().any():
            counts = error_matrix(pairs[f"class_{date}"].to_numpy(), matched[column].to_numpy(), classes)
            strata = aligned[f"class_{date}"].astype(str)
            mapped = area.groupby(strata.to_numpy()).sum()
            results[date] = olofsson(counts, mapped, z=z, unit="km²", population=strata.value_counts())
    if not results:
        raise InputError("the reference sample has no labels: fill 'reference' (change class) or "
                         "'reference_before'/'reference_after' (land-use classes)")
    return results
