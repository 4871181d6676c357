"""NLCD land-cover codes and their grouping into land-use classes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from tiling.errors import InputError

#: NLCD (2001-2021 editions) legend: code -> name.
NLCD_NAMES: dict[int, str] = {
    11: "Open Water",
    12: "Perennial Ice/Snow",
    21: "Developed, Open Space",
    22: "Developed, Low Intensity",
    23: "Developed, Medium Intensity",
    24: "Developed, High Intensity",
    31: "Barren Land",
    41: "Deciduous Forest",
    42: "Evergreen Forest",
    43: "Mixed Forest",
    51: "Dwarf Scrub",
    52: "Shrub/Scrub",
    71: "Grassland/Herbaceous",
    72: "Sedge/Herbaceous",
    73: "Lichens",
    74: "Moss",
    81: "Pasture/Hay",
    82: "Cultivated Crops",
    90: "Woody Wetlands",
    95: "Emergent Herbaceous Wetlands",
}

#: The official NLCD colour table (RGB), as embedded in MRLC's GeoTIFFs.
NLCD_COLORS: dict[int, tuple[int, int, int]] = {
    11: (70, 107, 159),
    12: (209, 222, 248),
    21: (222, 197, 197),
    22: (217, 146, 130),
    23: (235, 0, 0),
    24: (171, 0, 0),
    31: (179, 172, 159),
    41: (104, 171, 95),
    42: (28, 95, 44),
    43: (181, 197, 143),
    51: (166, 140, 48),
    52: (204, 184, 121),
    71: (223, 223, 194),
    72: (209, 209, 130),
    73: (164, 204, 81),
    74: (130, 186, 158),
    81: (220, 217, 57),
    82: (171, 108, 40),
    90: (184, 217, 235),
    95: (108, 159, 184),
}

#: The value MRLC uses for "no data" in NLCD rasters.
NLCD_NODATA = 255

#: The code of "no land-use class" in a scheme's code space (:meth:`ClassScheme.lookup_table`) and so of
#: "nodata" in a land-use map: class ``i`` is code ``i + 1``.
NO_CLASS = 0

_DEFAULT_GROUPS: dict[str, tuple[int, ...]] = {
    "Developed": (21, 22, 23, 24),
    "Barren": (31,),
    "Forest": (41, 42, 43, 90),
    "Shrub": (51, 52),
    "Herbaceous": (71, 72, 73, 74, 95),
    "Cultivated": (81, 82),
}

#: The NLCD code whose legend colour each default class takes: an analyst reads these maps with NLCD's legend
#: in mind, so a class gathered from NLCD codes is drawn as NLCD draws them.
DEFAULT_COLOR_CODES: dict[str, int] = {
    "Developed": 23,  # Developed, Medium Intensity: NLCD's red
    "Barren": 31,
    "Forest": 41,  # Deciduous Forest
    "Shrub": 52,
    "Herbaceous": 71,  # Grassland/Herbaceous
    "Cultivated": 82,  # Cultivated Crops
}

_DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {
    name: NLCD_COLORS[code] for name, code in DEFAULT_COLOR_CODES.items()}

_FALLBACK_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


@dataclass(frozen=True)
class ClassScheme:
    """A grouping of NLCD codes into land-use classes.

    Classes keep their order: class ``i`` (0-based) is written as code ``i + 1`` in land-use maps, 0 being
    nodata. NLCD codes that belong to no class (water and ice in the default scheme) are valid land cover
    but not land use: they count toward a chip's area without voting for a label.

    Args:
        groups: class name -> the NLCD codes it gathers, in map order.
        colors: class name -> RGB colour for maps; missing classes get a default colour.
    """

    groups: Mapping[str, tuple[int, ...]]
    colors: Mapping[str, tuple[int, int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.groups:
            raise InputError("a class scheme needs at least one class")
        seen: dict[int, str] = {}
        for name, codes in self.groups.items():
            if not path_safe(name):
                # class names become directory names (chips materialized as split/Class/id.png)
                raise InputError(f"class name {name!r} cannot be a directory name: give a name without '/', "
                                 "'\\' or control characters, other than '.' and '..'")
            for code in codes:
                if code not in NLCD_NAMES:
                    raise InputError(f"class {name!r} lists {code}, which is not an NLCD code "
                                     f"(valid: {', '.join(map(str, sorted(NLCD_NAMES)))})")
                if code in seen:
                    raise InputError(f"NLCD code {code} is in both {seen[code]!r} and {name!r}")
                seen[code] = name
        object.__setattr__(self, "groups", {k: tuple(int(c) for c in v) for k, v in self.groups.items()})

    @classmethod
    def default(cls) -> ClassScheme:
        """The seed study's six land-use classes."""
        return cls(_DEFAULT_GROUPS, _DEFAULT_COLORS)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Iterable[int]]) -> ClassScheme:
        """Build a scheme from ``{class: [codes]}``, e.g. parsed from YAML or JSON."""
        return cls({str(k): tuple(int(c) for c in v) for k, v in data.items()})

    @property
    def names(self) -> list[str]:
        """Class names in map order."""
        return list(self.groups)

    def color(self, name: str) -> tuple[int, int, int]:
        """RGB colour used for ``name`` in maps.

        The scheme's own colour when it has one; else a default class's NLCD legend colour
        (:data:`DEFAULT_COLOR_CODES`); else, for a class gathered from NLCD codes, the NLCD legend colour of its
        first code; else one of a fixed qualitative palette.
        """
        if name in self.colors:
            return tuple(self.colors[name])  # type: ignore[return-value]
        if name in _DEFAULT_COLORS:
            return _DEFAULT_COLORS[name]
        codes = self.groups.get(name)
        if codes:
            return NLCD_COLORS[codes[0]]
        return _FALLBACK_COLORS[self.names.index(name) % len(_FALLBACK_COLORS)]

    def lookup_table(self) -> np.ndarray:
        """A 256-entry table mapping an NLCD code to its class index + 1 (0 for codes in no class)."""
        table = np.zeros(256, dtype=np.uint8)
        for i, codes in enumerate(self.groups.values()):
            table[list(codes)] = i + 1
        return table

    def to_dict(self) -> dict[str, list[int]]:
        """JSON/YAML-friendly form, the inverse of :meth:`from_mapping`."""
        return {k: list(v) for k, v in self.groups.items()}

    def to_tags(self) -> dict[str, str]:
        """The scheme as GeoTIFF metadata tags, how every land-use map carries its classes.

        ``CLASS_NAMES`` (JSON list, code order), ``CLASS_CODES`` (``{name: code}``, class ``i`` is code
        ``i + 1``), ``CLASS_SCHEME`` (``{name: [NLCD codes]}``), ``CLASS_COLORS`` (``{name: [r, g, b]}``) and
        ``NODATA_CODE`` (0). :meth:`from_tags` reads them back.
        """
        return {
            "CLASS_NAMES": json.dumps(self.names),
            "CLASS_CODES": json.dumps({name: i + 1 for i, name in enumerate(self.names)}),
            "CLASS_SCHEME": json.dumps(self.to_dict()),
            "CLASS_COLORS": json.dumps({name: list(self.color(name)) for name in self.names}),
            "NODATA_CODE": str(NO_CLASS),
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], source: str | os.PathLike[str] | None = None) -> ClassScheme:
        """The scheme a land-use map's tags hold (:meth:`to_tags`).

        Args:
            tags: the raster's metadata tags (``dataset.tags()``).
            source: the file they come from, named in the error.

        Raises:
            InputError: no ``CLASS_SCHEME`` tag (not a geoclf land-use map), or tags that do not parse into a
                scheme; one line naming ``source``.
        """
        if "CLASS_SCHEME" not in tags:
            raise InputError("is not a geoclf land-use map (no CLASS_SCHEME tag)", source)
        try:
            groups = json.loads(tags["CLASS_SCHEME"])
            colors = json.loads(tags.get("CLASS_COLORS", "{}"))
            parsed = {name: _rgb(value) for name, value in colors.items()}
            return cls({str(k): tuple(v) for k, v in groups.items()}, parsed)
        except (ValueError, AttributeError, TypeError) as exc:
            raise InputError(f"has an unreadable class scheme tag ({exc})", source) from exc


def _rgb(value: object) -> tuple[int, int, int]:
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value)):
        raise ValueError(f"colour {value!r} is not [r, g, b] with values 0-255")
    return tuple(value)  # type: ignore[return-value]


def path_safe(name: object) -> bool:
    """Whether ``name`` can be one file or directory name as it is: no separator, no control character, not
    empty, ``.`` or ``..``: written under a folder, it stays in that folder."""
    text = str(name)
    return bool(text.strip()) and text not in (".", "..") and not any(c in text for c in "/\\") and \
        all(ord(c) >= 32 for c in text)


def valid_nlcd_codes() -> np.ndarray:
    """A 256-entry boolean table, true for NLCD codes and for the nodata value."""
    table = np.zeros(256, dtype=bool)
    table[list(NLCD_NAMES)] = True
    table[NLCD_NODATA] = True
    return table
