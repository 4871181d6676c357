"""The synthetic scene generator: file conventions, determinism, imagery that shows its land cover, years."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from pyproj import Transformer
from rasterio import features
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Compression, MaskFlags, Resampling
from rasterio.warp import reproject

from tiling.classes import NLCD_COLORS, NLCD_NAMES, ClassScheme
from tiling.errors import InputError
from tiling.io import describe_naip, scene_date
from tiling.synth import NLCD_ORIGIN, WORLD_CODES, SyntheticWorld, make_nlcd, make_scene, make_years

SCHEME = ClassScheme.default()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 1,344 m scene (6 x 6 chips of 224 m) with its NLCD; seed 0 holds forest, houses, fields, water."""
    return make_scene(tmp_path_factory.mktemp("synth"), size_m=1344, seed=0)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Two years of one 1,120 m place, with a conversion rate high enough to see change in a small area."""
    return make_years(tmp_path_factory.mktemp("synth-years"), years=(2010, 2016), size_m=1120, seed=0,
                      conversion_rate=0.05, conversions_after=2009)


def read_all(path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read()


def nlcd_on_naip(naip_path, nlcd_path) -> np.ndarray:
    """NLCD codes warped (nearest) onto the NAIP pixel grid by GDAL, independently of the generator."""
    with rasterio.open(naip_path) as naip, rasterio.open(nlcd_path) as nlcd:
        codes = np.full((naip.height, naip.width), 255, dtype=np.uint8)
        reproject(rasterio.band(nlcd, 1), codes, dst_transform=naip.transform, dst_crs=naip.crs,
                  resampling=Resampling.nearest, dst_nodata=255)
    return codes


def land_use(codes: np.ndarray) -> np.ndarray:
    """Class name of every pixel ('' for codes in no class)."""
    names = np.array(["", *SCHEME.names])
    return names[SCHEME.lookup_table()[codes]]


def test_naip_follows_the_naip_conventions(scene):
    info = describe_naip(scene.naip, min_bands=4)
    assert info.crs == CRS.from_epsg(26919) and info.res == (1.0, 1.0) and info.nodata == 0
    assert (info.height, info.width) == scene.shape == (1344, 1344)
    assert info.date == scene.date and scene.date.year == 2016 and 6 <= scene.date.month <= 9
    with rasterio.open(scene.naip) as dataset:
        assert dataset.count == 4 and set(dataset.dtypes) == {"uint8"}
        assert dataset.descriptions == ("red", "green", "blue", "nir")
        assert dataset.block_shapes[0] == (512, 512) and dataset.compression == Compression.deflate
        assert dataset.overviews(1)  # decimated reads stay cheap
        assert scene_date(scene.naip.stem, dataset.tags()) == scene.date
    # The scene is centred on the requested point
    lon, lat = Transformer.from_crs(26919, 4326, always_xy=True).transform(
        (info.bounds[0] + info.bounds[2]) / 2, (info.bounds[1] + info.bounds[3]) / 2)
    assert lon == pytest.approx(-71.80, abs=1e-4) and lat == pytest.approx(42.35, abs=1e-4)


def test_nodata_is_a_collar_of_all_zero_pixels(scene):
    pixels = read_all(scene.naip)
    nodata = (pixels == 0).all(axis=0)
    # Every edge has some collar, the interior none, and a valid pixel is never 0 in all bands.
    assert nodata[0].any() and nodata[-1].any() and nodata[:, 0].any() and nodata[:, -1].any()
    assert not nodata[100:-100, 100:-100].any()
    assert scene.nodata_share == pytest.approx(nodata.mean())
    # The collar comes from a lon/lat box: its inner edge is slanted in UTM, not parallel to the raster's edge.
    first_valid = nodata.argmin(axis=1)[200:-200]
    assert first_valid.max() - first_valid.min() >= 3


def test_nlcd_follows_the_nlcd_conventions(scene):
    with rasterio.open(scene.nlcd) as nlcd:
        assert nlcd.crs == CRS.from_epsg(5070) and nlcd.res == (30.0, 30.0)
        assert nlcd.count == 1 and nlcd.dtypes[0] == "uint8" and nlcd.nodata == 255
        # cells on the national NLCD grid
        assert (nlcd.transform.c - NLCD_ORIGIN[0]) % 30 == 0 and (NLCD_ORIGIN[1] - nlcd.transform.f) % 30 == 0
        colormap = nlcd.colormap(1)
        for code, rgb in NLCD_COLORS.items():
            assert colormap[code][:3] == rgb
        codes = nlcd.read(1)
        bounds = nlcd.bounds
    assert set(np.unique(codes)) <= set(WORLD_CODES) <= set(NLCD_NAMES)
    # it covers the whole scene
    with rasterio.open(scene.naip) as naip:
        left, bottom, right, top = naip.bounds
    xs, ys = Transformer.from_crs(26919, 5070, always_xy=True).transform([left, left, right, right],
                                                                         [bottom, top, bottom, top])
    assert min(xs) > bounds.left and max(xs) < bounds.right and min(ys) > bounds.bottom and max(ys) < bounds.top


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path):
    a = make_scene(tmp_path / "a", size_m=448, seed=3, nlcd=False)
    b = make_scene(tmp_path / "b", size_m=448, seed=3, nlcd=False)
    c = make_scene(tmp_path / "c", size_m=448, seed=4, nlcd=False)
    np.testing.assert_array_equal(read_all(a.naip), read_all(b.naip))
    assert (read_all(a.naip) != read_all(c.naip)).mean() > 0.5


FINGERPRINTS = json.loads((Path(__file__).parent / "data" / "synth" / "fingerprint.json").read_text())


def naip_block_means(path, block: int) -> tuple[np.ndarray, int, str]:
    with rasterio.open(path) as dataset:
        pixels = dataset.read().astype(np.float64)
        date = dataset.tags()["ACQUISITION_DATE"]
    bands, height, width = pixels.shape
    cut = pixels[:, :height // block * block, :width // block * block]
    means = cut.reshape(bands, height // block, block, width // block, block).mean(axis=(2, 4))
    return means, int((pixels == 0).all(axis=0).sum()), date


@pytest.mark.parametrize("name, kwargs", [
    ("scene_448m_seed3", {"size_m": 448, "seed": 3, "year": 2016, "nlcd_year": 2010, "conversion_rate": 0.05}),
    ("scene_4m_seed2", {"size_m": 1024, "resolution": 4.0, "seed": 2, "nlcd": False}),
])
def test_output_matches_the_recorded_fingerprint(tmp_path, name, kwargs):
    """The generator makes what it made when the fingerprints were recorded (before it became a package).

    Land cover and conversions are integers and compared exactly. Imagery is compared by 64 x 64 (16 x 16 at
    4 m) block means to 0.01 DN: any change to a texture or a colour moves them by far more, while a last-bit
    difference of a float function on another CPU can only flip a rare pixel by one DN.
    """
    expected = FINGERPRINTS[name]
    scene = make_scene(tmp_path, **kwargs)
    naip = expected["naip"]
    means, zeros, date = naip_block_means(scene.naip, naip["block"])
    assert [len(means), *scene.shape] == naip["shape"] and date == naip["date"] == scene.date.isoformat()
    np.testing.assert_allclose(means, np.array(naip["block_means"]), atol=0.01)
    assert zeros == naip["zero_pixels"]
    if "nlcd" in expected:
        with rasterio.open(scene.nlcd) as nlcd:
            codes = nlcd.read(1)
            assert list(nlcd.transform)[:6] == expected["nlcd"]["transform"]
        assert hashlib.sha256(codes.tobytes()).hexdigest() == expected["nlcd"]["sha256"]
        parts = [[f["properties"][key] for key in ("part", "year", "from_code", "to_code", "area_m2")]
                 for f in json.loads(scene.conversions.read_text())["features"]]
        assert [p[:4] for p in parts] == [p[:4] for p in expected["conversions"]]
        np.testing.assert_allclose([p[4] for p in parts], [p[4] for p in expected["conversions"]], atol=1.0)


def test_import_tiling_leaves_the_generator_unloaded():
    code = ("import sys, tiling\n"
            "assert 'tiling.synth' not in sys.modules\n"
            "from tiling import make_scene\n"
            "import tiling.synth\n"
            "assert make_scene is tiling.synth.make_scene is tiling.make_scene\n"
            "assert {'make_scene', 'make_years', 'make_nlcd', 'make_utm_pair'} <= set(dir(tiling))\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_imagery_shows_its_land_cover(scene):
    """Mapping the NLCD onto the pixels with GDAL: vegetation is bright in NIR, pavement and water are not."""
    pixels = read_all(scene.naip).astype(np.float64)
    codes = nlcd_on_naip(scene.naip, scene.nlcd)
    classes = land_use(codes)
    valid = (pixels > 0).any(axis=0)
    red, nir = pixels[0], pixels[3]
    ratio = nir / np.maximum(red, 1)
    median = {name: np.median(ratio[valid & (classes == name)]) for name in ("Forest", "Developed", "Cultivated")}
    assert median["Forest"] > 1.5 * median["Developed"]
    assert median["Cultivated"] > median["Developed"]
    water = valid & (codes == 11)
    assert water.sum() > 1000 and np.median(nir[water]) < 0.5 * np.median(nir[valid & (classes == "Forest")])
    # Developed land has hard edges (roofs, streets): more strong pixel-to-pixel steps than fields have.
    step = np.abs(np.diff(pixels[:3].mean(axis=0), axis=1)) > 25
    edges = {name: step[(valid & (classes == name))[:, 1:]].mean() for name in ("Developed", "Cultivated")}
    assert edges["Developed"] > 3 * edges["Cultivated"]
    # the reported shares are those of the NLCD under the scene, to within the 30 m cell size
    for name in ("Forest", "Developed", "Cultivated"):
        assert scene.class_shares[name] == pytest.approx((classes[valid] == name).mean(), abs=0.03)


def test_world_is_one_function_of_place_and_year():
    """Land cover at a point does not depend on which other points are asked for with it."""
    world = SyntheticWorld(seed=5)
    rng = np.random.default_rng(0)
    x = 1_950_000 + rng.uniform(0, 3000, 5000)
    y = 2_350_000 + rng.uniform(0, 3000, 5000)
    whole = world.land_cover(x, y, 2016)
    parts = np.concatenate([world.land_cover(x[:100], y[:100], 2016), world.land_cover(x[100:], y[100:], 2016)])
    np.testing.assert_array_equal(whole, parts)
    assert len(np.unique(whole)) >= 5


def test_years_share_a_grid_and_record_their_conversions(series):
    import geopandas as gpd

    assert sorted(series.naip) == [2010, 2016]
    with rasterio.open(series.naip[2010]) as a, rasterio.open(series.naip[2016]) as b:
        assert a.transform == b.transform and a.shape == b.shape and a.crs == b.crs
        transform, crs, shape = a.transform, a.crs, a.shape
    assert [s.date.year for s in series.scenes.values()] == [2010, 2016]
    with rasterio.open(series.nlcd) as nlcd:
        assert nlcd.tags()["NLCD_YEAR"] == "2010"

    conversions = gpd.read_file(series.conversions)
    assert conversions.crs == CRS.from_epsg(5070) and len(conversions) >= 1
    assert conversions["year"].between(2011, 2016).all()
    assert conversions["to_code"].isin([21, 22, 23, 24]).all()
    assert not conversions["from_code"].isin([11, 21, 22, 23, 24, 90, 95]).any()
    # The NLCD (2010) still shows the land before its conversion
    inner = conversions.geometry.buffer(-20)
    inner = inner[~inner.is_empty]
    points = inner.representative_point()
    with rasterio.open(series.nlcd) as nlcd:
        before = np.array([v[0] for v in nlcd.sample(zip(points.x, points.y, strict=True))])
    assert (before == conversions.loc[points.index, "from_code"].to_numpy()).all()

    # In the imagery, converted land looks like the Developed land of the same year: classify 32 m windows
    # by their band means and spreads, learnt from the land that did not change.
    from sklearn.neighbors import NearestCentroid
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    converted = features.rasterize(conversions.to_crs(crs).geometry, out_shape=shape, transform=transform) > 0
    classes = land_use(nlcd_on_naip(series.naip[2010], series.nlcd))
    after, before_img = read_all(series.naip[2016]), read_all(series.naip[2010])
    window = 32

    def has_data(cut) -> bool:
        return bool((after[:, cut[0], cut[1]] > 0).any(axis=0).all())

    def unchanged(cut) -> str | None:
        names = np.unique(classes[cut])
        keep = len(names) == 1 and names[0] != "" and not converted[cut].any() and has_data(cut)
        return str(names[0]) if keep else None

    def inside(cut) -> str | None:
        return "converted" if converted[cut].all() and has_data(cut) else None

    def windows(image: np.ndarray, label_of) -> tuple[np.ndarray, list[str]]:
        feats, labels = [], []
        for r in range(0, shape[0] - window, window):
            for c in range(0, shape[1] - window, window):
                cut = (slice(r, r + window), slice(c, c + window))
                label = label_of(cut)
                if label is not None:
                    block = image[:, cut[0], cut[1]].reshape(4, -1).astype(float)
                    feats.append(np.concatenate([block.mean(1), block.std(1)]))
                    labels.append(label)
        return np.array(feats), labels

    train_x, train_y = windows(after, unchanged)
    model = make_pipeline(StandardScaler(), NearestCentroid()).fit(train_x, train_y)
    later, _ = windows(after, inside)
    earlier, _ = windows(before_img, inside)
    assert len(later) >= 10
    assert (model.predict(later) == "Developed").mean() > 0.5
    assert (model.predict(earlier) == "Developed").mean() < 0.1


def test_one_nlcd_covers_scenes_in_two_utm_zones(utm_pair):
    scenes, nlcd_path = utm_pair
    assert [s.crs for s in scenes] == ["EPSG:26918", "EPSG:26919"]
    with rasterio.open(nlcd_path) as nlcd:
        bounds = nlcd.bounds
        assert nlcd.crs == CRS.from_epsg(5070)
    for scene in scenes:
        left, bottom, right, top = scene.bounds
        xs, ys = Transformer.from_crs(scene.crs, 5070, always_xy=True).transform([left, left, right, right],
                                                                                 [bottom, top, bottom, top])
        assert min(xs) > bounds.left and max(xs) < bounds.right and min(ys) > bounds.bottom and max(ys) < bounds.top
        # both scenes show the shared land cover: vegetation bright in NIR wherever the NLCD says forest
        pixels = read_all(scene.naip).astype(float)
        classes = land_use(nlcd_on_naip(scene.naip, nlcd_path))
        ratio = pixels[3] / np.maximum(pixels[0], 1)
        forest, developed = classes == "Forest", classes == "Developed"
        if forest.sum() > 1000 and developed.sum() > 1000:
            assert np.median(ratio[forest]) > np.median(ratio[developed])


def test_make_nlcd_for_bounds_and_a_later_year(tmp_path):
    bounds = (1_950_000.0, 2_350_000.0, 1_953_000.0, 2_352_000.0)
    early = make_nlcd(tmp_path / "a.tif", bounds=bounds, seed=2, year=2005, margin_m=0, conversion_rate=0.05)
    late = make_nlcd(tmp_path / "b.tif", bounds=bounds, seed=2, year=2020, margin_m=0, conversion_rate=0.05)
    a, b = read_all(early)[0], read_all(late)[0]
    assert a.shape == b.shape
    with rasterio.open(early) as nlcd:  # snapped outwards to the NLCD grid: at most one cell beyond the bounds
        left, bottom, right, top = nlcd.bounds
    assert 0 <= bounds[0] - left < 30 and 0 <= right - bounds[2] < 30
    assert 0 <= bounds[1] - bottom < 30 and 0 <= top - bounds[3] < 30
    developed = np.isin(b, (21, 22, 23, 24))
    # land only ever becomes Developed, never the reverse
    assert np.isin(a, (21, 22, 23, 24)).sum() < developed.sum()
    assert (b[a != b] >= 21).all() and (b[a != b] <= 24).all()


def test_scene_with_an_earlier_nlcd_records_the_conversions_between(tmp_path):
    scene = make_scene(tmp_path, size_m=448, seed=0, year=2016, nlcd_year=2004, conversion_rate=0.2)
    assert scene.conversions == tmp_path / "conversions.geojson"
    with rasterio.open(scene.nlcd) as nlcd:
        assert nlcd.tags()["NLCD_YEAR"] == "2004"
    years = [f["properties"]["year"] for f in json.loads(scene.conversions.read_text())["features"]]
    assert years and all(2004 < year <= 2016 for year in years)


def test_coarse_pixels_average_the_ground(tmp_path):
    """A 4 m scene is the 1 m scene's ground averaged, not point-sampled (which would alias textures)."""
    fine = make_scene(tmp_path / "fine", size_m=528, seed=0, nlcd=False, collar_m=0)
    coarse = make_scene(tmp_path / "coarse", size_m=512, resolution=4.0, seed=0, nlcd=False, collar_m=0)
    with rasterio.open(coarse.naip) as dataset:
        assert dataset.res == (4.0, 4.0) and dataset.shape == (128, 128)
        b = dataset.read().astype(float)
        bounds = dataset.bounds
    with rasterio.open(fine.naip) as dataset:  # the same ground at 1 m
        a = dataset.read(window=dataset.window(*bounds)).astype(float)
    a = a.reshape(4, 128, 4, 128, 4).mean(axis=(2, 4))
    assert np.abs(a - b).mean() < 4  # sensor noise (drawn per pixel) is what differs


VARIANTS = {
    "alpha": {"nodata": "alpha"},
    "mask": {"nodata": "mask"},
    "rgb": {"bands": 3},
    "rgb-alpha": {"bands": 3, "nodata": "alpha"},
    "rgb-mask": {"bands": 3, "nodata": "mask"},
    "date-in-name": {"date_in": "name"},
    "undated": {"date_in": "none"},
}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The default 448 m scene the variants are compared with."""
    return make_scene(tmp_path_factory.mktemp("plain"), size_m=448, seed=0, nlcd=False)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_hold_the_default_pixels_wherever_they_have_data(plain, tmp_path, variant):
    options = VARIANTS[variant]
    scene = make_scene(tmp_path, size_m=448, seed=0, nlcd=False, **options)
    bands = options.get("bands", 4)
    nodata = options.get("nodata", "zero")
    with rasterio.open(plain.naip) as dataset:
        reference = dataset.read()
    valid = (reference > 0).any(axis=0)
    with rasterio.open(scene.naip) as dataset:
        pixels = dataset.read()
        assert dataset.count == bands + (nodata == "alpha")
        assert dataset.descriptions[:bands] == ("red", "green", "blue", "nir")[:bands]
        assert dataset.nodata == (0 if nodata == "zero" else None)
        flags = dataset.mask_flag_enums[0]
        if nodata == "alpha":
            assert dataset.colorinterp[-1] == ColorInterp.alpha and dataset.descriptions[-1] == "alpha"
            np.testing.assert_array_equal(pixels[-1] > 0, valid)  # alpha 0 exactly on the collar
        elif nodata == "mask":
            assert flags == [MaskFlags.per_dataset]
            np.testing.assert_array_equal(dataset.dataset_mask() > 0, valid)
        else:
            assert flags == [MaskFlags.nodata]
        tags = dataset.tags()
    np.testing.assert_array_equal(pixels[:bands][:, valid], reference[:bands][:, valid])
    collar = pixels[:bands][:, ~valid]
    assert (~valid).sum() > 1000
    if nodata == "zero":
        assert (collar == 0).all()
    else:  # the collar holds imagery: only the mask says it has no data
        assert (collar > 0).any(axis=0).all()
    date_in = options.get("date_in", "tag")
    assert ("ACQUISITION_DATE" in tags) == (date_in == "tag")
    assert scene.naip.name == (f"naip_{plain.date:%Y%m%d}.tif" if date_in == "name" else "naip.tif")
    assert describe_naip(scene.naip).date == (None if date_in == "none" else plain.date) == scene.date
    assert scene.class_shares == plain.class_shares and scene.nodata_share == plain.nodata_share


def test_a_series_of_undated_rgb_scenes(tmp_path):
    series = make_years(tmp_path, years=(2010, 2012), size_m=224, seed=0, bands=3, date_in="none")
    for year, scene in series.scenes.items():
        assert scene.naip.name == f"naip_{year}.tif" and scene.date is None
        info = describe_naip(scene.naip)
        assert info.count == 3 and info.date is None


def test_cli_writes_the_variants(tmp_path, capsys):
    from geoclf.cli import main

    main(["synth", "--out", str(tmp_path), "--size-m", "224", "--bands", "3", "--nodata", "mask", "--date-in", "none",
          "--no-nlcd"])
    assert "undated (2016)" in capsys.readouterr().out
    with rasterio.open(tmp_path / "naip.tif") as dataset:
        assert dataset.count == 3 and dataset.mask_flag_enums[0] == [MaskFlags.per_dataset]
        assert "ACQUISITION_DATE" not in dataset.tags()


def test_outputs_are_written_atomically_with_the_umask_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        scene = make_scene(tmp_path / "a", size_m=448, seed=0, nlcd_year=2010, conversion_rate=0.2)
        for path in (scene.naip, scene.nlcd, scene.conversions):
            assert path.stat().st_mode & 0o777 == 0o640, path
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["conversions.geojson", "naip.tif", "nlcd.tif"]

        def interrupt(done: int, total: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):  # Ctrl-C while rendering: the scene there stays whole
            make_scene(tmp_path / "a", size_m=1024, seed=1, nlcd=False, progress=interrupt)
        np.testing.assert_array_equal(read_all(scene.naip).shape, (4, 448, 448))
        assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["conversions.geojson", "naip.tif", "nlcd.tif"]
    finally:
        os.umask(old)


def test_cli_writes_naip_and_nlcd(tmp_path, capsys):
    from geoclf.cli import main

    main(["synth", "--out", str(tmp_path), "--size-m", "448", "--seed", "1", "--year", "2012"])
    assert (tmp_path / "naip.tif").exists() and (tmp_path / "nlcd.tif").exists()
    out = capsys.readouterr().out
    assert str(tmp_path / "naip.tif") in out and "Forest" in out
    with rasterio.open(tmp_path / "naip.tif") as dataset:
        assert dataset.tags()["ACQUISITION_DATE"].startswith("2012-") and dataset.shape == (448, 448)


def test_cli_time_series(tmp_path, capsys):
    from geoclf.cli import main

    main(["synth", "--out", str(tmp_path), "--size-m", "448", "--years", "2010", "2014", "--conversion-rate", "0.2",
          "--conversions-after", "2010"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["conversions.geojson", "naip_2010.tif", "naip_2014.tif", "nlcd.tif"]
    conversions = json.loads((tmp_path / "conversions.geojson").read_text())["features"]
    assert conversions and {f["properties"]["year"] for f in conversions} <= {2011, 2012, 2013, 2014}
    assert "parts became Developed after 2010" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--center", "north"], "--center must be N,N"),
    (["--crs", "EPSG:4326"], "projected in metres"),
    (["--size-m", "3"], "too small"),
    (["--year", "16"], "four-digit year"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, message):
    from geoclf.cli import main

    with pytest.raises(SystemExit) as exit_code:
        main(["synth", "--out", str(tmp_path), *args])
    assert exit_code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_bad_parameters_raise_input_errors(tmp_path):
    with pytest.raises(InputError, match="projected in metres"):
        make_scene(tmp_path, crs="EPSG:4326", size_m=448)
    with pytest.raises(InputError, match="unknown CRS"):
        make_scene(tmp_path, crs="EPSG:999999", size_m=448)
    with pytest.raises(InputError, match="either scenes or bounds"):
        make_nlcd(tmp_path / "x.tif")
    with pytest.raises(InputError, match="conversion rate"):
        SyntheticWorld(conversion_rate=1.5)
    with pytest.raises(InputError, match="3 .RGB. or 4"):
        make_scene(tmp_path, size_m=448, bands=5)
    with pytest.raises(InputError, match="unknown nodata kind"):
        make_scene(tmp_path, size_m=448, nodata="nan")
    with pytest.raises(InputError, match="unknown date place"):
        make_years(tmp_path, size_m=448, date_in="exif")
    with pytest.raises(InputError, match="unknown synthetic preset 'harder'; valid: default, hard"):
        make_scene(tmp_path, size_m=448, preset="harder")
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_hard_preset_same_land_cover_other_radiometry(scene, tmp_path):
    """The hard world shows the same land cover (identical NLCD) with per-parcel radiometry: a class's chips
    no longer share one colour, so band means overlap between classes."""
    hard = make_scene(tmp_path, size_m=1344, seed=0, preset="hard")
    assert Path(hard.nlcd).read_bytes() == Path(scene.nlcd).read_bytes()
    with rasterio.open(hard.naip) as dataset:
        assert dataset.tags()["SYNTH_PRESET"] == "hard"
        pixels = dataset.read()
    with rasterio.open(scene.naip) as dataset:
        assert "SYNTH_PRESET" not in dataset.tags()  # the default scene keeps its bytes
        plain = dataset.read()
    assert (pixels == 0).all(axis=0).sum() == (plain == 0).all(axis=0).sum()  # the same collar
    codes = nlcd_on_naip(hard.naip, hard.nlcd)[16:1312:32, 16:1312:32]

    def spread(image: np.ndarray) -> float:
        """Spread (std) of the means of 32 m blocks of one NLCD code, averaged over codes and bands."""
        blocks = image[:, :1312, :1312].astype(float).reshape(4, 41, 32, 41, 32)
        valid = (blocks > 0).all(axis=(0, 2, 4))  # blocks clear of the collar
        means = blocks.mean(axis=(2, 4))
        return float(np.mean([means[:, (codes == code) & valid].std(axis=1).mean() for code in np.unique(codes)
                              if ((codes == code) & valid).sum() > 20]))

    assert spread(pixels) > 1.4 * spread(plain)
