"""Styles beside a class COG, so GIS tools show class names: GDAL categories and attribute table, QGIS, SLD.

A GeoTIFF colour table gives each code a colour but no name, so QGIS or ArcGIS would list the classes as 1-6.
Three sidecars name them, each read by tools people already use:

- ``landuse.tif.aux.xml``: GDAL's PAM file with the band's *category names* (code ``i`` is the ``i``-th name)
  and a thematic *raster attribute table* (value, class, NLCD codes, colour). GDAL reads it whenever it opens
  the raster (``gdalinfo`` lists "Categories"; QGIS and ArcGIS show the table);
- ``landuse.qml``: a QGIS paletted style with one labelled entry per class. QGIS applies a ``.qml`` that sits
  beside a raster with the same base name as its default style when the raster is opened;
- ``landuse.sld``: the same palette as an OGC Styled Layer Descriptor ``ColorMap``, for GeoServer, MapServer or
  QGIS's style import.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from geoclf.landuse.grid import NODATA
from tiling.io import atomic_path

if TYPE_CHECKING:
    from geoclf.landuse.cog import Legend

PathLike = str | os.PathLike[str]

#: What the nodata code is called where a table needs a row for it (GDAL's category names are by position).
NODATA_NAME = "No data"

# GDAL raster attribute table field types (GDALRATFieldType) and usages (GDALRATFieldUsage).
_INTEGER, _STRING = 0, 2
_MIN_MAX, _NAME, _RED, _GREEN, _BLUE, _GENERIC = 5, 2, 6, 7, 8, 0


def style_paths(path: PathLike) -> dict[str, Path]:
    """The sidecar files of a class COG: ``aux`` (``<name>.tif.aux.xml``), ``qml`` and ``sld``."""
    target = Path(path)
    return {"aux": target.with_name(target.name + ".aux.xml"), "qml": target.with_suffix(".qml"),
            "sld": target.with_suffix(".sld")}


def write_styles(path: PathLike, classes: Legend, title: str = "Land use") -> dict[str, Path]:
    """Write the three sidecars of the class COG ``path`` (see the module docstring), atomically.

    Args:
        path: the COG (``landuse.tif``, ``change.tif``); the sidecars are named after it.
        classes: the legend of its codes (code ``i + 1`` is ``classes.names[i]``); a scheme's NLCD grouping,
            when it has one, goes into the attribute table.
        title: the style's title (SLD).

    Returns:
        ``{"aux": ..., "qml": ..., "sld": ...}``, the files written.
    """
    paths = style_paths(path)
    documents = {"aux": pam_xml(classes), "qml": qml_style(classes), "sld": sld_style(classes, Path(path).stem, title)}
    for key, text in documents.items():
        with atomic_path(paths[key]) as temporary:
            temporary.write_text(text, encoding="utf-8")
    return paths


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb[:3])


def _text(element: ET.Element) -> str:
    ET.indent(element)
    return ET.tostring(element, encoding="unicode") + "\n"


def pam_xml(classes: Legend) -> str:
    """GDAL's PAM document for band 1: category names by code (0 is :data:`NODATA_NAME`) and a thematic raster
    attribute table with ``Value``, ``Class``, ``NLCD`` (the codes gathered, when known) and ``Red``/``Green``/
    ``Blue``."""
    groups = classes.to_dict() if hasattr(classes, "to_dict") else {}
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    categories = ET.SubElement(band, "CategoryNames")
    for name in [NODATA_NAME, *classes.names]:  # by position: the i-th category is code i, and 0 is nodata
        ET.SubElement(categories, "Category").text = name
    table = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    fields = [("Value", _INTEGER, _MIN_MAX), ("Class", _STRING, _NAME), ("NLCD", _STRING, _GENERIC),
              ("Red", _INTEGER, _RED), ("Green", _INTEGER, _GREEN), ("Blue", _INTEGER, _BLUE)]
    for index, (name, kind, usage) in enumerate(fields):
        field = ET.SubElement(table, "FieldDefn", index=str(index))
        ET.SubElement(field, "Name").text = name
        ET.SubElement(field, "Type").text = str(kind)
        ET.SubElement(field, "Usage").text = str(usage)
    for i, name in enumerate(classes.names):
        row = ET.SubElement(table, "Row", index=str(i))
        nlcd = ",".join(str(code) for code in groups.get(name, ()))
        for value in (i + 1, name, nlcd, *classes.color(name)):
            ET.SubElement(row, "F").text = str(value)
    return _text(root)


def qml_style(classes: Legend) -> str:
    """A QGIS layer style (``.qml``): a paletted renderer of band 1, one labelled entry per class, nodata
    transparent."""
    root = ET.Element("qgis", version="3.28.0", styleCategories="Symbology")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1",
                             nodataColor="")
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for i, name in enumerate(classes.names):
        ET.SubElement(palette, "paletteEntry", value=str(i + 1), color=_hex(classes.color(name)), alpha="255",
                      label=name)
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + _text(root)


def sld_style(classes: Legend, layer: str, title: str) -> str:
    """An SLD 1.0 raster style: a ``values`` colour map with one labelled entry per class."""
    # Plain names under a default namespace declared by hand: ElementTree's namespace registry is global.
    root = ET.Element("StyledLayerDescriptor", {"version": "1.0.0", "xmlns": "http://www.opengis.net/sld",
                                                 "xmlns:ogc": "http://www.opengis.net/ogc"})
    named = ET.SubElement(root, "NamedLayer")
    ET.SubElement(named, "Name").text = layer
    style = ET.SubElement(named, "UserStyle")
    ET.SubElement(style, "Title").text = title
    rule = ET.SubElement(ET.SubElement(style, "FeatureTypeStyle"), "Rule")
    symbolizer = ET.SubElement(rule, "RasterSymbolizer")
    ET.SubElement(symbolizer, "Opacity").text = "1.0"
    colormap = ET.SubElement(symbolizer, "ColorMap", type="values")
    ET.SubElement(colormap, "ColorMapEntry", color="#000000", quantity=str(NODATA), opacity="0", label=NODATA_NAME)
    for i, name in enumerate(classes.names):
        ET.SubElement(colormap, "ColorMapEntry", color=_hex(classes.color(name)), quantity=str(i + 1), opacity="1",
                      label=name)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + _text(root)
