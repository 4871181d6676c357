"""Change on the chip grid: smoothing a date's predictions, the transition raster ``change.tif`` and its legends."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from pyproj import Transformer
from rasterio.crs import CRS

from geoclf.change.pairs import ARROW, STABLE
from geoclf.landuse import PROB_PREFIX, LandUseGrid, majority_filter, predictions_to_grid, write_landuse_cog
from tiling.classes import ClassScheme
from tiling.errors import InputError
from tiling.grid import parse_cell

PathLike = str | os.PathLike[str]


def smooth_predictions(predictions: gpd.GeoDataFrame, scheme: ClassScheme, size: int = 3) -> gpd.GeoDataFrame:
    """A copy of one date's predictions with a ``class`` column smoothed by a plurality filter.

    The predictions are rasterized on their chip grid (one pixel per chip,
    :func:`geoclf.landuse.predictions_to_grid`) and filtered with :func:`geoclf.landuse.majority_filter`
    (``size`` x ``size``, 3 by default), which removes
    isolated single-chip labels: most of them are classifier noise, and every one would otherwise make two
    spurious transitions. The price: real patches smaller than about five chips vanish too, and edges of
    patches can move by a chip, so smoothing trades small real changes for fewer false ones. ``pred`` is
    kept; :func:`geoclf.change.align_dates` compares ``class`` when it is present.
    """
    grid = predictions_to_grid(_grid_table(predictions), scheme)
    codes = majority_filter(grid.codes, size)
    code = _sample_grid(predictions, grid._replace(codes=codes))
    names = np.array(scheme.names, dtype=object)
    smoothed = predictions.copy()
    smoothed["class"] = np.where(code > 0, names[np.maximum(code, 1) - 1], predictions["pred"].astype(str))
    return smoothed


def _grid_table(table: pd.DataFrame, pred: str = "pred") -> pd.DataFrame:
    """The columns :func:`geoclf.landuse.predictions_to_grid` needs, derived from the ``cell`` keys."""
    if "cell" not in table.columns or table["cell"].isna().any():
        raise InputError("chips without 'cell' keys cannot be placed on a chip grid")
    cells = parse_cell(table["cell"])
    if cells["grid"].isna().any():
        raise InputError("malformed 'cell' keys; expected <crs>:<size>:<stride>:<ix>:<iy>")
    frame = pd.DataFrame({"cell": table["cell"].to_numpy(), "ix": cells["ix"].astype(np.int64).to_numpy(),
                          "iy": cells["iy"].astype(np.int64).to_numpy(), "crs": cells["grid_crs"].to_numpy(),
                          "pred": table[pred].astype(str).to_numpy()})
    for column in table.columns:
        if str(column).startswith(PROB_PREFIX) and not str(column).endswith(("_before", "_after")):
            frame[column] = table[column].to_numpy()
    return frame


def _sample_grid(table: pd.DataFrame, grid: LandUseGrid) -> np.ndarray:
    """The grid's code under each chip: at the centre of the chip's stride square, the pixel it became."""
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


class TransitionLegend:
    """Names and colours of raster codes that are not land-use classes (transitions, change displays).

    It offers what the map writers of :mod:`geoclf.landuse` and :mod:`geoclf.webmap` read from a
    :class:`~tiling.classes.ClassScheme` (the :class:`geoclf.landuse.Legend` protocol and ``to_dict()``):
    ``names`` (code ``i + 1`` is ``names[i]``), ``color(name)`` and ``to_dict()``.
    """

    def __init__(self, names: Sequence[str], colors: Sequence[tuple[int, int, int]]) -> None:
        self.names = list(names)
        self.colors = dict(zip(self.names, (tuple(int(v) for v in c) for c in colors), strict=True))

    def color(self, name: str) -> tuple[int, int, int]:
        """The RGB colour of a code's name."""
        return self.colors[name]

    def to_dict(self) -> dict[str, list[int]]:
        """Names -> (no) NLCD codes, the layout of :meth:`tiling.classes.ClassScheme.to_dict`."""
        return {name: [] for name in self.names}

    def to_scheme(self) -> ClassScheme:
        """The legend as a :class:`~tiling.classes.ClassScheme` (no NLCD codes), for writers that take one."""
        return ClassScheme(self.to_dict(), dict(self.colors))


def _tint(rgb: tuple[int, int, int], amount: float = 0.65) -> tuple[int, int, int]:
    """The colour mixed with white: stable land stays recognisable but steps back behind change."""
    return tuple(round(v + (255 - v) * amount) for v in rgb)  # type: ignore[return-value]


def _shade(rgb: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    """The colour mixed with black (``amount`` < 0) or white (> 0) by ``|amount|``."""
    target = 255 if amount > 0 else 0
    return tuple(round(v + (target - v) * abs(amount)) for v in rgb)  # type: ignore[return-value]


def transition_legend(scheme: ClassScheme) -> TransitionLegend:
    """The codes of ``change.tif``: ``from_index * C + to_index + 1`` (0-based class indices, C classes).

    Stable transitions (``"Stable Forest"``) are drawn in a pale tint of the class colour. A change is drawn in
    a shade of the colour of the class it became, darker or lighter by the class it was: every "→ Developed" is
    red, and "Forest→Developed" and "Cultivated→Developed" are two reds, told apart on the map and in its
    legend.
    """
    names, colors = [], []
    # shades from 55% black to 45% white: the lightest stays clear of the stable tints (65% white)
    shades = np.linspace(-0.55, 0.45, max(len(scheme.names) - 1, 1)) if len(scheme.names) > 2 else [-0.3]
    for a in scheme.names:
        for b in scheme.names:
            if a == b:
                names.append(STABLE + a)
                colors.append(_tint(scheme.color(a)))
                continue
            k = [name for name in scheme.names if name != b].index(a)
            names.append(a + ARROW + b)
            colors.append(_shade(scheme.color(b), float(shades[k])))
    return TransitionLegend(names, colors)


def display_legend(scheme: ClassScheme) -> TransitionLegend:
    """A short legend for maps: no change, or the class the land became."""
    names = ["No change"] + [f"Became {name}" for name in scheme.names]
    return TransitionLegend(names, [(225, 225, 225)] + [scheme.color(name) for name in scheme.names])


#: The name of code 1 of :func:`change_display`: chips whose class stayed.
NO_CHANGE = "No change"


def change_display(aligned: pd.DataFrame, scheme: ClassScheme) -> tuple[LandUseGrid, TransitionLegend, pd.Series]:
    """The change map as people read it: "No change" and each from -> to transition present, largest first.

    Returns:
        The grid (code 1 no change, ``1 + k`` the ``k``-th transition of the legend, 0 not compared), its legend
        (transition colours of :func:`transition_legend`, "No change" light grey) and the km² of each changed
        transition, in legend order.
    """
    changed = aligned[aligned["class_before"].astype(str) != aligned["class_after"].astype(str)]
    km2 = changed.groupby([changed["class_before"].astype(str), changed["class_after"].astype(str)])[
        "area_km2"].sum()
    km2.index = [a + ARROW + b for a, b in km2.index]
    return transition_display(change_grids(aligned, scheme)["transition"], scheme, km2)


def changed_km2(km2: pd.DataFrame, chips: pd.DataFrame) -> pd.Series:
    """The km² of each from -> to transition that happened (``"Forest→Developed"``), from the transition
    matrices in km² and chips (:func:`geoclf.change.transition_matrix`), in the order :func:`change_display`
    lists them before sorting: by from-class, then to-class name."""
    found = [(a, b) for a in km2.index for b in km2.columns if a != b and chips.loc[a, b] > 0]
    found.sort()
    return pd.Series([float(km2.loc[a, b]) for a, b in found], index=[a + ARROW + b for a, b in found],
                     dtype=float)


def transition_display(transition: LandUseGrid, scheme: ClassScheme,
                       km2: pd.Series) -> tuple[LandUseGrid, TransitionLegend, pd.Series]:
    """:func:`change_display` from a grid of transition codes (``change.tif``, whole or from its overviews) and
    the km² of each changed transition (:func:`changed_km2`): what a map needs, without the pairs."""
    full = transition_legend(scheme)
    codes_in = np.asarray(transition.codes).astype(np.int64)
    n = len(scheme.names)
    km2 = km2.sort_values(ascending=False, kind="stable")
    present = [name for name in km2.index if name in full.names]
    codes = np.zeros(codes_in.shape, dtype=np.uint8)
    stable = (codes_in > 0) & ((codes_in - 1) // n == (codes_in - 1) % n)
    codes[stable] = 1
    for k, name in enumerate(present):
        codes[codes_in == full.names.index(name) + 1] = k + 2
    legend = TransitionLegend([NO_CHANGE, *present], [(225, 225, 225), *(full.color(n) for n in present)])
    return transition._replace(codes=codes), legend, km2.loc[present]


def transition_classes(transition: LandUseGrid, scheme: ClassScheme) -> dict[str, LandUseGrid]:
    """The ``before`` and ``after`` class grids that a grid of transition codes holds (0 where not compared)."""
    codes = np.asarray(transition.codes).astype(np.int64)
    n = len(scheme.names)
    compared = codes > 0
    before = np.where(compared, (codes - 1) // n + 1, 0).astype(np.uint8)
    after = np.where(compared, (codes - 1) % n + 1, 0).astype(np.uint8)
    return {"before": transition._replace(codes=before), "after": transition._replace(codes=after)}


def change_grids(aligned: pd.DataFrame, scheme: ClassScheme, *, crs: object = None,
                 resolution: float | None = None) -> dict[str, LandUseGrid]:
    """The compared area on the after-date chip grid: ``before`` and ``after`` classes, ``transition`` codes
    (see :func:`transition_legend`) and ``display`` codes (0 nodata, 1 no change, ``1 + k`` became class k).

    ``crs`` and ``resolution`` are :func:`geoclf.landuse.predictions_to_grid`'s: a partition of a larger area
    passes the area's, so that its grid is a piece of the area's.
    """
    before = predictions_to_grid(_grid_table(aligned, "class_before"), scheme, crs=crs, resolution=resolution)
    after = predictions_to_grid(_grid_table(aligned, "class_after"), scheme, crs=crs, resolution=resolution)
    b = before.codes.astype(np.int64)
    a = after.codes.astype(np.int64)
    both = (b > 0) & (a > 0)
    n = len(scheme.names)
    transition = np.where(both, (b - 1) * n + a, 0).astype(np.uint8 if n * n < 256 else np.uint16)
    display = np.where(both, np.where(a == b, 1, a + 1), 0).astype(np.uint8)
    return {"before": before, "after": after, "transition": after._replace(codes=transition),
            "display": after._replace(codes=display)}


def transition_grid(aligned: pd.DataFrame, scheme: ClassScheme, *, crs: object = None,
                    resolution: float | None = None) -> LandUseGrid:
    """``change_grids(aligned, scheme)["transition"]`` in one rasterization instead of two: each pair's
    transition code placed on its cell (both dates' classes sit on the same cells, so the codes are the same)."""
    n = len(scheme.names)
    legend = transition_legend(scheme)
    index = {name: i for i, name in enumerate(scheme.names)}
    before = aligned["class_before"].astype(str).map(index).to_numpy()
    after = aligned["class_after"].astype(str).map(index).to_numpy()
    names = np.array(legend.names, dtype=object)[before * n + after]
    table = _grid_table(aligned.assign(_transition=names), "_transition")
    grid = predictions_to_grid(table, legend.to_scheme(), crs=crs, resolution=resolution)
    return grid._replace(codes=grid.codes.astype(np.uint8 if n * n < 256 else np.uint16))


def write_change_cog(path: PathLike, aligned: pd.DataFrame, scheme: ClassScheme) -> Path:
    """Write ``change.tif``: a COG on the chip grid coding each chip's from -> to transition.

    Code ``from_index * C + to_index + 1`` (0 nodata), with a colour table and the transition names in the
    ``CLASS_NAMES`` tag, as in ``landuse.tif``.
    """
    if len(scheme.names) ** 2 > 255:
        raise InputError(f"{len(scheme.names)} classes make more transitions than an 8-bit colour table holds")
    grid = change_grids(aligned, scheme)["transition"]
    return write_landuse_cog(path, grid, transition_legend(scheme))  # type: ignore[arg-type]
