"""Land-use change between two dates: chips paired across dates, transitions, gains and losses, zones.

The stages, each in its module:

- :mod:`geoclf.change.pairs` -- pairing each after-date chip with the before-date chip of the same place
  (:func:`align_dates`; predictions are read by :func:`geoclf.landuse.read_predictions`); change labels and
  the ranking of changed chips;
- :mod:`geoclf.change.summaries` -- over the pairs: the transition matrix, areas per class and date, gross
  gains and losses, urbanization, zonal summaries and error-adjusted estimates from a reference sample;
- :mod:`geoclf.change.maps` -- the chip grid: plurality smoothing of one date, the transition COG;
- :mod:`geoclf.change.page` -- the interactive map ``change.html``: both dates' imagery and land use under a
  swipe, the change layer with a colour per from -> to transition, the ranked chips;
- :mod:`geoclf.change.report` -- the area chart, the static change map, image pairs and ``report.html``;
- :mod:`geoclf.change.partitioned` -- score outputs of many partitions: each after-date partition paired with
  the before-date partitions it touches, the summaries added up (:class:`TransitionTally`), ``change.tif``
  from per-partition tiles; the client never holds an area's table;
- :mod:`geoclf.change.run` -- :func:`run_change`: all of the above written to a directory.

Areas are ground areas in km² (see :func:`geoclf.area.chip_area_km2`). Counted areas are *mapped* areas and
inherit the maps' errors; change is hit twice, since a wrong label on either date makes a transition. For
areas with confidence intervals, label a stratified sample of chips (:func:`geoclf.area.stratified_sample` on
:func:`change_labels`) and use :func:`reference_estimates`.
"""

from __future__ import annotations

from geoclf.change.maps import (
    NO_CHANGE,
    TransitionLegend,
    change_display,
    change_grids,
    changed_km2,
    display_legend,
    smooth_predictions,
    transition_classes,
    transition_display,
    transition_legend,
    write_change_cog,
)
from geoclf.change.page import change_html, transition_label, write_change_page
from geoclf.change.pairs import (
    ARROW,
    MIN_OVERLAP,
    STABLE,
    align_dates,
    aligned_classes,
    change_labels,
    date_label,
    label_changes,
    pair_dates,
    rank_changes,
)
from geoclf.change.report import (
    area_bar_chart,
    change_png,
    date_colors,
    display_png,
    write_image_pairs,
    write_report,
)
from geoclf.change.run import load_scheme, run_change
from geoclf.change.summaries import (
    TransitionTally,
    class_areas,
    gains_losses,
    match_reference,
    reference_estimates,
    transition_matrix,
    transitions_long,
    urbanization,
    zonal_summary,
)
from geoclf.landuse import PROB_PREFIX, prediction_classes, read_predictions
from geoclf.zones import DEVELOPED, read_reference, read_zones, zone_names

__all__ = [
    "ARROW",
    "DEVELOPED",
    "MIN_OVERLAP",
    "NO_CHANGE",
    "PROB_PREFIX",
    "STABLE",
    "TransitionLegend",
    "TransitionTally",
    "align_dates",
    "aligned_classes",
    "area_bar_chart",
    "change_display",
    "change_grids",
    "change_html",
    "change_labels",
    "change_png",
    "changed_km2",
    "class_areas",
    "date_colors",
    "date_label",
    "display_legend",
    "display_png",
    "gains_losses",
    "label_changes",
    "load_scheme",
    "match_reference",
    "pair_dates",
    "prediction_classes",
    "rank_changes",
    "read_predictions",
    "read_reference",
    "read_zones",
    "reference_estimates",
    "run_change",
    "smooth_predictions",
    "transition_classes",
    "transition_display",
    "transition_label",
    "transition_legend",
    "transition_matrix",
    "transitions_long",
    "urbanization",
    "write_change_cog",
    "write_change_page",
    "write_image_pairs",
    "write_report",
    "zonal_summary",
    "zone_names",
]
