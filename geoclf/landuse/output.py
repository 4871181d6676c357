"""The files of a ``geoclf score`` output (:class:`ScoreOutput`) and the predictions table's contract."""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq

from geoclf.landuse.cog import read_header, read_landuse
from geoclf.landuse.grid import PROB_PREFIX, LandUseGrid
from tiling.classes import ClassScheme
from tiling.errors import InputError

PathLike = str | os.PathLike[str]


class ScoreOutput:
    """The files of one ``geoclf score`` output: where each one is, and readers for the ones others read.

    ``ScoreOutput(path)`` takes what users pass around: the output directory, its ``landuse.tif`` (or any
    land-use COG: its siblings are then looked for beside it) or its predictions table (any ``.parquet`` file;
    the maps are looked for beside it). :meth:`at` names the files of an output directory to write.

    The attribute names are the keys of the dictionaries ``score`` and ``write_maps`` return.

    Attributes:
        directory: the output directory.
        landuse: ``landuse.tif``: class codes with a colour table and the class scheme as tags.
        predictions: ``predictions.parquet``: GeoParquet, one row per chip with ``pred`` and ``prob_<Class>``.
    """

    PREDICTIONS = "predictions.parquet"
    LANDUSE = "landuse.tif"
    PROBABILITIES = "landuse_probs.tif"
    POLYGONS = "landuse.parquet"
    GEOJSON = "landuse.geojson"
    HTML = "map.html"
    PNG = "map.png"
    QML = "landuse.qml"
    SLD = "landuse.sld"
    ACCURACY = "accuracy.json"
    CHIPS = "chips.parquet"
    PARTITIONS = "partitions"
    DATASET = "predictions"
    TILES = "tiles"
    MOSAIC = "landuse.vrt"
    PROBABILITY_MOSAIC = "landuse_probs.vrt"

    def __init__(self, path: PathLike) -> None:
        given = Path(path)
        suffix = given.suffix.lower()
        self.given = given
        if given.is_dir() or (not given.exists() and suffix not in (".tif", ".tiff", ".parquet")):
            self.directory = given
        else:
            self.directory = given.parent
        self.landuse = given if suffix in (".tif", ".tiff") else self.directory / self.LANDUSE
        # a predictions table may have any name (change analysis compares before.parquet with after.parquet)
        self.predictions = given if suffix == ".parquet" else self.directory / self.PREDICTIONS

    @classmethod
    def at(cls, directory: PathLike) -> ScoreOutput:
        """The output that is (or will be) written into ``directory``, whatever that directory is called."""
        output = cls.__new__(cls)
        output.given = output.directory = Path(directory)
        output.landuse = output.directory / cls.LANDUSE
        output.predictions = output.directory / cls.PREDICTIONS
        return output

    def __repr__(self) -> str:
        return f"ScoreOutput({os.fspath(self.given)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScoreOutput) and (self.directory, self.landuse, self.predictions) == (
            other.directory, other.landuse, other.predictions)

    def __hash__(self) -> int:
        return hash((self.directory, self.landuse, self.predictions))

    @property
    def probabilities(self) -> Path:
        """``landuse_probs.tif`` beside the land-use map: per-class probabilities on its grid."""
        return self.landuse.with_name(self.PROBABILITIES)

    @property
    def qml(self) -> Path:
        """``landuse.qml``: the QGIS style of the land-use map (class names and colours), loaded with it."""
        return self.landuse.with_suffix(".qml")

    @property
    def sld(self) -> Path:
        """``landuse.sld``: the same style as an OGC Styled Layer Descriptor."""
        return self.landuse.with_suffix(".sld")

    @property
    def categories(self) -> Path:
        """``landuse.tif.aux.xml``: GDAL's category names and raster attribute table of the land-use map."""
        return self.landuse.with_name(self.landuse.name + ".aux.xml")

    @property
    def polygons(self) -> Path:
        """``landuse.parquet``: one (multi)polygon per class, GeoParquet in the map's CRS."""
        return self.directory / self.POLYGONS

    @property
    def geojson(self) -> Path:
        """``landuse.geojson``: the class polygons in EPSG:4326."""
        return self.directory / self.GEOJSON

    @property
    def html(self) -> Path:
        """``map.html``: the interactive map."""
        return self.directory / self.HTML

    @property
    def png(self) -> Path:
        """``map.png``: the static map."""
        return self.directory / self.PNG

    @property
    def accuracy(self) -> Path:
        """``accuracy.json``: agreement with the reference labels, when labelled chips were scored."""
        return self.directory / self.ACCURACY

    @property
    def chips(self) -> Path:
        """``chips.parquet``: the chips scored (when the output tiled NAIP itself)."""
        return self.directory / self.CHIPS

    @property
    def partitions(self) -> Path:
        """``partitions/``: the partial results a rerun resumes from, when a given chip index was scored."""
        return self.directory / self.PARTITIONS

    @property
    def dataset(self) -> Path:
        """``predictions/``: the predictions as a GeoParquet dataset, one file per block of a scene
        (``<scene>/part-NNNNN.parquet``), written by the workers; a rerun resumes from it."""
        return self.directory / self.DATASET

    @property
    def tiles(self) -> Path:
        """``tiles/``: each block's map tile (``<scene>/part-NNNNN.tif`` and ``.probs.tif``), written by the workers."""
        return self.directory / self.TILES

    @property
    def mosaic(self) -> Path:
        """``landuse.vrt``: the map tiles as one raster, with the colour table and class scheme of ``landuse.tif``."""
        return self.directory / self.MOSAIC

    @property
    def probability_mosaic(self) -> Path:
        """``landuse_probs.vrt``: the tiles' probabilities as one raster."""
        return self.directory / self.PROBABILITY_MOSAIC

    def dataset_files(self) -> list[Path]:
        """The files of the predictions dataset, sorted (empty without one)."""
        return sorted(self.dataset.glob("*/part-*.parquet")) if self.dataset.is_dir() else []

    def require_landuse(self) -> Path:
        """The land-use map's path; an :class:`InputError` naming what was given when there is none."""
        if not self.landuse.is_file():
            if self.landuse == self.given:
                raise InputError("no such file", self.landuse)
            raise InputError("no landuse.tif here; give a `geoclf score` output directory or a land-use COG",
                             self.directory)
        return self.landuse

    def read_predictions(self) -> gpd.GeoDataFrame:
        """Read the predictions table (GeoParquet) and check it against the contract (see
        :func:`prediction_classes`).

        Raises:
            InputError: the file is missing, is not GeoParquet with footprints, or lacks ``pred``/``prob_*``.
        """
        file = self.predictions
        if not file.exists() and self.predictions.name == self.PREDICTIONS and self.dataset_files():
            file = self.dataset  # an area too large for one file: the dataset is the table
        if not file.exists():
            raise InputError("no predictions.parquet here (give a `geoclf score` output directory or the file)"
                             if self.given.is_dir() else "no such file", file)
        try:
            frame = gpd.read_parquet(file)
        except ValueError as exc:  # geopandas' message for Parquet without geometry metadata
            raise InputError(f"has no geometry, so chips cannot be placed ({_first_line(exc)}); predictions must "
                             "be GeoParquet with chip footprints", file) from exc
        except Exception as exc:
            raise InputError(f"cannot be read as GeoParquet ({_first_line(exc)})", file) from exc
        prediction_classes(frame, name=str(file))
        return frame

    def read_landuse(self, probabilities: bool = False) -> tuple[LandUseGrid, ClassScheme]:
        """The land-use grid (with ``probs`` when ``probabilities``) and its class scheme (:func:`read_landuse`)."""
        landuse = self.require_landuse()
        if probabilities and not self.probabilities.is_file():
            raise InputError("no landuse_probs.tif beside the map (score with --probabilities to get it)",
                             self.probabilities)
        return read_landuse(landuse, self.probabilities if probabilities else None)

    @property
    def classes(self) -> ClassScheme:
        """The class scheme of this output: its ``landuse.tif`` tags (names, order, NLCD groups, colours) when
        the map is there, else the predictions table's metadata (:func:`classes_of`)."""
        if self.landuse.is_file():
            return read_header(self.landuse).classes
        if not self.predictions.is_file():
            raise InputError("no landuse.tif or predictions.parquet here to read the class scheme from",
                             self.given)
        try:
            names = pq.read_schema(self.predictions).names
            # only the probability columns: the table's metadata (class groups) comes with any column
            frame = pd.read_parquet(self.predictions, columns=[c for c in names if c.startswith(PROB_PREFIX)])
        except Exception as exc:
            raise InputError(f"cannot be read as Parquet ({_first_line(exc)})", self.predictions) from exc
        return classes_of(frame)

    def models(self) -> list[str] | None:
        """The model names in the predictions table (sorted), ``None`` without a table or a ``model`` column."""
        if not self.predictions.is_file() or "model" not in pq.read_schema(self.predictions).names:
            return None
        names = pd.read_parquet(self.predictions, columns=["model"])["model"]
        return sorted(str(m) for m in names.dropna().unique())


def read_predictions(path: PathLike) -> gpd.GeoDataFrame:
    """Read a predictions table: a score output directory (``DIR/predictions.parquet``) or the file itself.

    Shorthand for ``ScoreOutput(path).read_predictions()``.
    """
    return ScoreOutput(path).read_predictions()


def prediction_classes(predictions: pd.DataFrame, name: str | None = None) -> list[str]:
    """The classes a predictions table was scored with, in the model's order (from its ``prob_*`` columns).

    Also checks what the stages after scoring rely on: footprints with a CRS, a ``pred`` column, and
    predicted classes that are among the scored ones.

    Raises:
        InputError: any of these is missing (``name`` starts the message).
    """
    if not isinstance(predictions, gpd.GeoDataFrame) or predictions.geometry.name not in predictions.columns:
        raise InputError("predictions without geometry: chip footprints are needed to compare dates", name)
    if predictions.crs is None:
        raise InputError("the chip footprints have no CRS", name)
    if "pred" not in predictions.columns:
        raise InputError("no 'pred' column; is this a geoclf predictions table?", name)
    classes = [str(c)[len(PROB_PREFIX):] for c in predictions.columns if str(c).startswith(PROB_PREFIX)]
    if not classes:
        raise InputError("no prob_<class> columns; is this a geoclf predictions table?", name)
    unknown = sorted(set(predictions["pred"].dropna().astype(str)) - set(classes))
    if unknown:
        raise InputError(f"predicted classes {unknown} have no probability column", name)
    return classes


def classes_of(predictions: pd.DataFrame) -> ClassScheme:
    """The class scheme of a predictions table: from its metadata, else its ``prob_<Class>`` columns."""
    meta = predictions.attrs.get("geoclf", {})
    groups = meta.get("class_groups")
    if groups:
        return ClassScheme.from_mapping(groups)
    names = meta.get("classes") or [c[len(PROB_PREFIX):] for c in predictions.columns if c.startswith(PROB_PREFIX)]
    if not names:
        raise InputError("the predictions name no classes (no prob_<Class> columns)")
    return ClassScheme.from_mapping({name: [] for name in names})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
