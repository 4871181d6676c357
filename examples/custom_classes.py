"""A custom grouping of NLCD codes into land-use classes (Developed / Vegetation / Agriculture), tiled and summarized.

The seed study's six classes are one choice; a class scheme is any ordered mapping of class names to NLCD
codes. Codes left out of every class (here water, barren land and ice) still count toward a chip's area but
vote for no label: a chip that is mostly water is not kept as any land-use class.

Writes into OUT:

    OUT/classes.yaml             the scheme, in the format ``geoclf tile --classes`` reads
    OUT/chips/chips.parquet      the chip index labeled with the three classes
    OUT/chips/png/               the chips as PNG files in split/Class/ folders (the seed study's layout)
    OUT/summary.csv              chips per class and split, and the mean class make-up of each class's chips

Usage::

    python examples/custom_classes.py OUT [--naip scene/naip.tif --nlcd scene/nlcd.tif]

Without ``--naip``/``--nlcd`` a small synthetic scene is made in OUT/scene. The shell equivalent of the
tiling step is ``geoclf tile --naip NAIP --nlcd NLCD --classes OUT/classes.yaml --out OUT/chips``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

import tiling
from tiling.materialize import materialize_chips

#: Developed as in NLCD; every natural vegetation class in one; pasture and crops as agriculture.
GROUPS = {
    "Developed": [21, 22, 23, 24],
    "Vegetation": [41, 42, 43, 51, 52, 71, 72, 73, 74, 90, 95],
    "Agriculture": [81, 82],
}
COLORS = {"Developed": (200, 30, 30), "Vegetation": (40, 130, 60), "Agriculture": (220, 170, 40)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output directory (created if missing)")
    parser.add_argument("--naip", type=Path, default=None, help="a NAIP raster (default: a synthetic scene)")
    parser.add_argument("--nlcd", type=Path, default=None, help="the NLCD raster under it")
    parser.add_argument("--size-m", type=float, default=1792.0,
                        help="side of the synthetic scene in metres (default: %(default)s)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if (args.naip is None) != (args.nlcd is None):
        parser.error("give both --naip and --nlcd, or neither")
    if args.naip is None:
        from tiling.synth import make_scene

        scene = make_scene(out / "scene", size_m=args.size_m, seed=0)
        naip, nlcd = scene.naip, scene.nlcd
    else:
        naip, nlcd = args.naip, args.nlcd

    # The scheme checks itself: unknown NLCD codes or a code in two classes raise a one-line InputError.
    scheme = tiling.ClassScheme(GROUPS, COLORS)
    (out / "classes.yaml").write_text(yaml.safe_dump(scheme.to_dict(), sort_keys=False, default_flow_style=None))
    left_out = sorted(set(tiling.NLCD_NAMES) - {code for codes in GROUPS.values() for code in codes})
    print(f"classes: {', '.join(scheme.names)}; not land use: "
          f"{', '.join(f'{code} {tiling.NLCD_NAMES[code]}' for code in left_out)}")

    # Tile with the scheme: labels, purity and frac_<Class> columns follow it. Three broad classes make
    # purer chips than six narrow ones, so more chips pass the 0.6 purity filter.
    params = tiling.TileParams(classes=scheme.to_dict(), min_purity=0.6)
    index = tiling.tile([naip], nlcd, out / "chips", params=params, scheduler="sync", progress=False)
    counts = tiling.summarize(index)
    print(f"\n{len(index)} chips")
    print(counts.to_string())

    # What the chips of each class are made of: mean fraction of each class (and of unmapped codes).
    fractions = [f"frac_{name}" for name in scheme.names] + ["frac_unmapped"]
    makeup = index.groupby("label")[fractions].mean().reindex(scheme.names).dropna(how="all")
    print("\nmean make-up of the chips of each class:")
    print(makeup.to_string(float_format=lambda v: f"{v:.2f}"))
    summary = counts.join(makeup, how="left")
    summary.to_csv(out / "summary.csv")

    # PNG chips in split/Class/ folders, for eyeballing or for tools that expect an image folder.
    written = materialize_chips(index, out / "chips" / "png", fmt="png", progress=False)
    folders = sorted({p.parent.relative_to(out / "chips" / "png").as_posix()
                      for p in (out / "chips" / "png").glob("*/*/*.png")})
    print(f"\n{written} PNG chips in {', '.join(folders)}")


if __name__ == "__main__":
    main()
