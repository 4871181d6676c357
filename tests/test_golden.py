"""Golden outputs: the quickstart recipe (and a trend over its two maps) gives the same outputs as before.

Restructuring must not change what users get. The fingerprints in ``tests/data/golden/quickstart.json`` were
made from the code before the restructuring; see ``tests/golden.py`` for what is compared and how to
regenerate them after an intended change of outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from golden import differences, tree_fingerprint

GOLDEN = Path(__file__).parent / "data" / "golden" / "quickstart.json"
FOLDERS = ["scene", "chips", "features", "report-lr-lite0", "map-2010", "map-2016", "change", "trend"]


def _model_specs(workdir: Path) -> dict[str, object]:
    from golden import file_fingerprint

    specs = {}
    for path in sorted((workdir / "runs").rglob("model.json")):
        name = json.loads(path.read_text()).get("name", path.parent.name)
        specs[f"model:{name}"] = file_fingerprint(path, str(workdir))
    return specs


def test_quickstart_outputs_match_the_golden_fingerprints(quickstart):
    from geoclf.trend import analyze_trends

    workdir = quickstart[0]
    if not (workdir / "trend").exists():
        analyze_trends([workdir / "map-2010", workdir / "map-2016"], workdir / "trend")
    actual = {**tree_fingerprint(workdir, FOLDERS), **_model_specs(workdir)}
    if os.environ.get("GEOCLF_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(actual, indent=1, sort_keys=True, default=str) + "\n")
    expected = json.loads(GOLDEN.read_text())
    found = differences(expected, json.loads(json.dumps(actual, default=str)))
    assert not found, f"{len(found)} output difference(s):\n" + "\n".join(found[:40])
