"""``geoclf change`` as a function: two score outputs compared, every change product written to one directory."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from geoclf.area import AreaEstimate, stratified_sample
from geoclf.change import partitioned
from geoclf.change.maps import changed_km2, smooth_predictions, transition_classes, transition_display
from geoclf.change.page import write_change_page
from geoclf.change.pairs import MIN_OVERLAP, change_labels, rank_changes
from geoclf.change.partitioned import (
    ChangeTally,
    Partition,
    area_crs,
    date_partitions,
    map_grid,
    partition_pairs,
    whole_partition,
)
from geoclf.change.report import area_bar_chart, display_png, write_image_pairs, write_report
from geoclf.change.summaries import (
    class_areas,
    gains_losses,
    reference_estimates,
    transition_matrix,
    transitions_long,
    urbanization,
)
from geoclf.landuse import PROB_PREFIX, ScoreOutput, prediction_classes, read_header, smoothing_window
from geoclf.landuse.mosaic import read_map
from geoclf.zones import DEVELOPED, read_reference, read_zones
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.io import atomic_path, relocated, staged_directory

PathLike = str | os.PathLike[str]


def load_scheme(score_dir: PathLike, classes: Sequence[str]) -> ClassScheme:
    """The class scheme (names, order, colours) of a score output: from its ``landuse.tif`` tags, else the
    default scheme when the classes are its classes."""
    output = ScoreOutput(score_dir)
    if output.landuse.exists():
        scheme = read_header(output.landuse).classes  # the header only: no pixel is needed
    else:
        scheme = ClassScheme.default()
        if set(scheme.names) != set(classes):
            raise InputError(f"no landuse.tif to read the class scheme from, and the classes {list(classes)} "
                             "are not the default scheme's", score_dir)
    if set(scheme.names) != set(classes):
        raise InputError(f"landuse.tif has classes {scheme.names} but predictions.parquet has {list(classes)}",
                         output.landuse)
    return scheme


def run_change(before: PathLike, after: PathLike, out: PathLike, *, zones: PathLike | None = None,
               zone_column: str | None = None, reference: PathLike | None = None, smooth: bool | int = False,
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
        zone_column: the zones' name column (default: guessed, see :func:`geoclf.zones.zone_names`).
        reference: a labelled reference sample (see :func:`geoclf.change.reference_estimates`).
        smooth: width of the plurality filter applied to each date before comparing (odd, in chips; 1 or
            ``False`` for none, ``True`` for 3).
        min_overlap: alignment threshold for chips on different grids (see :func:`geoclf.change.align_dates`).
        developed: the class whose gains are urbanization.
        pairs: how many top-ranked changes get before/after image pairs.
        sample_size: draw a stratified sample of this many chips to label.
        min_per_stratum: floor per change class in that sample (Olofsson et al. suggest 50-100).
        seed: seed of the sample.
        html_map: write the interactive map (and embed it in the report).

    Returns:
        Output name -> path.
    """
    # Inputs are read before anything is computed, so that a bad zone or reference file fails at once.
    zone_frame = read_zones(zones) if zones is not None else None
    samples = read_reference(reference) if reference is not None else None
    final = Path(out)
    # everything goes into a staging directory first: bad input found halfway (a reference sample, a
    # sample size) leaves no half set of products in the output directory
    with staged_directory(final) as out:
        window = smoothing_window(smooth)
        before_parts, after_parts = date_partitions(before), date_partitions(after)
        # smoothing needs each chip's neighbours, a reference sample or a sample to draw every pair at once: then
        # both dates are one table each, as a county fits in memory
        whole = window > 1 or samples is not None or bool(sample_size)
        if whole:
            before_parts, after_parts = [whole_partition(ScoreOutput(before))], [whole_partition(ScoreOutput(after))]
        classes = _partition_classes(before_parts[0])
        scheme = load_scheme(before, classes)
        names = scheme.names
        prepare = (lambda table: smooth_predictions(table, scheme, window)) if window > 1 else None
        tally = ChangeTally(list(names), zones=zone_frame, zone_column=zone_column, developed=developed,
                            tiles=out / _TILES, scheme=scheme)
        tally.map_crs, tally.resolution = map_grid(after_parts)
        aligned = None
        # the reader is looked up at each run, so that a test or a benchmark can watch what is read
        for found in partition_pairs(before_parts, after_parts, min_overlap=min_overlap, crs=area_crs(after_parts),
                                     reader=partitioned.read_partition, prepare=prepare):
            tally.add(found)
            if whole:
                aligned = found.aligned
        if not tally.counts["paired"]:
            raise InputError(f"the before and after predictions do not overlap (before covers "
                             f"{_covers(before_parts)}, after covers {_covers(after_parts)}); compare two dates of "
                             "the same area")
        labels = (tally.date_label("before"), tally.date_label("after"))
        written: dict[str, Path] = {}

        written["transitions"] = _write_table(transitions_long(tally.transitions, names), out / "transitions.csv",
                                              index=False)
        areas = class_areas(tally.transitions, names)
        flows = gains_losses(tally.transitions, names)
        per_class = areas.join(flows.drop(columns=["before_km2", "after_km2"]))
        written["classes"] = _write_table(per_class, out / "classes.csv")
        urban = None
        if developed in names:
            urban = urbanization(tally.transitions, names, developed)
            written["urbanization"] = _write_table(urban, out / "urbanization.csv")
        ranked = rank_changes(tally.changed_pairs(), names)
        written["changes"] = _write_table(ranked, out / "changes.parquet", index=False)
        written["change_tif"] = tally.write_map(out / "change.tif")
        shutil.rmtree(out / _TILES, ignore_errors=True)
        picture = read_map(written["change_tif"], max_pixels=MAP_MAX_PIXELS)
        km2 = changed_km2(tally.transitions.matrix("km2"), tally.transitions.matrix("chips"))
        display = transition_display(picture, scheme, km2)
        written["bar_chart"] = area_bar_chart(areas, out / "area_by_class.png", labels, scheme)
        written["change_png"] = display_png(display, labels, out / "change_map.png")
        pair_files: list[Path] = []
        if pairs:
            pair_files = write_image_pairs(ranked, out / "pairs", top=pairs)
            if pair_files:
                written["pairs"] = out / "pairs"
        zone_table = tally.zone_table
        if zone_table is not None:
            written["zones"] = _write_table(zone_table, out / "zones.csv")
        estimates: dict[str, AreaEstimate] = {}
        if samples is not None:
            estimates = reference_estimates(aligned, samples, names)
            area = pd.concat({key: est.area for key, est in estimates.items()}, names=["map"])
            accuracy = pd.concat({key: est.accuracy for key, est in estimates.items()}, names=["map"])
            written["area_estimates"] = _write_table(area, out / "area_estimates.csv")
            written["accuracy"] = _write_table(accuracy, out / "accuracy.csv")
        if sample_size:
            strata = aligned.assign(change=change_labels(aligned))
            sample = stratified_sample(strata, int(sample_size), strata_column="change",
                                       min_per_stratum=min_per_stratum, seed=seed)
            written["sample"] = _write_table(sample, out / "sample.parquet", index=False)
        if html_map:
            written["html"] = write_change_page(out / "change.html", scheme, display,
                                                transition_classes(picture, scheme), ranked, labels=labels,
                                                sources=tally.sources, compared_km2=tally.compared_km2,
                                                models=sorted(tally.models))

        info = tally.info(before_parts, min_overlap)
        info.update({"before": str(before), "after": str(after), "dates": list(labels), "smoothed": window > 1,
                     "compared_km2": tally.compared_km2,
                     "changed_km2": float(ranked["area_km2"].sum()) if len(ranked) else 0.0,
                     "changed_chips": len(ranked)})
        if window > 1:  # only then, so that unsmoothed outputs keep their former contents
            info["smoothing_window"] = window
        if urban is not None:
            info["to_developed_km2"] = float(urban.loc["Total", "km2"])
        with atomic_path(out / "change.json") as temporary:
            temporary.write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")
        written["json"] = out / "change.json"
        written["report"] = write_report(out / "report.html", info=info, per_class=per_class,
                                         matrix=transition_matrix(tally.transitions, names), urban=urban,
                                         ranked=ranked, zones=zone_table, estimates=estimates,
                                         bar_chart=written["bar_chart"], change_png=written["change_png"],
                                         html_map=written.get("html"), pairs=pair_files)
    return relocated(written, out, final)


#: Where the change map's tiles go while ``change.tif`` is made from them (removed after).
_TILES = ".change-tiles"
#: Longest side of the change map in the pictures (``change_map.png``, ``change.html``): a larger map is read
#: from the overviews of ``change.tif``, as the land-use map's pictures are.
MAP_MAX_PIXELS = 2048


def _partition_classes(partition: Partition) -> list[str]:
    """The classes a date was scored with, from a partition's schema (its rows are read only when the schema
    cannot be, for the error that reading gives)."""
    file = partition.path if partition.path is not None else partition.output.predictions
    try:
        names = pq.read_schema(file).names
    except Exception:
        names = []
    classes = [n[len(PROB_PREFIX):] for n in names if n.startswith(PROB_PREFIX)]
    return classes or prediction_classes(partitioned.read_partition(partition), partition.name)


def _covers(partitions: list[Partition]) -> str:
    boxes = np.array([p.bounds for p in partitions if p.bounds is not None], dtype=float)
    if not len(boxes):
        return "an unknown area"
    return (f"{boxes[:, 0].min():.4f},{boxes[:, 1].min():.4f},{boxes[:, 2].max():.4f},{boxes[:, 3].max():.4f} "
            "in longitude/latitude")


def _write_table(frame: pd.DataFrame, path: Path, *, index: bool = True) -> Path:
    """Write a table as CSV or (Geo)Parquet, by the name's suffix, atomically."""
    with atomic_path(path) as temporary:
        if path.suffix == ".parquet":
            frame.to_parquet(temporary, index=index)
        else:
            frame.to_csv(temporary, index=index)
    return path
