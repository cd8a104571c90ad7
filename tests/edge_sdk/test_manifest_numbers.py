"""Numbers in a tampered manifest that no float or array size can hold (a 400-digit integer,
an edge at 1e308) are one ManifestError naming manifest.json and the field: from the API, from
`edge-run` and from `edge-opt bench`, never an OverflowError traceback."""

from __future__ import annotations

import pytest

import edge_sdk
from edge_sdk.errors import ManifestError
from edge_sdk.manifest import Manifest
from tests.conftest import DATA, run_cli
from tests.edge_sdk.bundles import classifier_manifest, write_bundle

BIG = 10**400  # valid JSON, read exactly by Python, too large for float()


def _hist(edges: list) -> dict:
    m = classifier_manifest()
    m["calibration_stats"] = {"images": 3, "brightness": {"edges": edges,
                                                          "fractions": [0.5, 0.5]}}
    return m


CASES = [  # (id, manifest, words the message must hold)
    ("edge 400 digits", _hist([0, 1, BIG]),
     ["manifest.json", "calibration_stats/brightness/edges/2", "401-digit integer"]),
    ("edge 1e308", _hist([0, 1, 1e308]),
     ["calibration_stats/brightness/edges/2", "maximum"]),
    ("edge -1e308", _hist([-1e308, 1, 2]),
     ["calibration_stats/brightness/edges/0", "minimum"]),
    ("calibration images 1e12", {**_hist([0, 1, 2]), "calibration_stats": {"images": 10**12}},
     ["calibration_stats/images", "maximum"]),
    ("metrics 400 digits", {**classifier_manifest(), "metrics": {"size": BIG}},
     ["manifest.json", "metrics/size", "401-digit integer"]),
]


@pytest.mark.parametrize(("manifest", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_load_refuses_numbers_with_one_manifest_error(tmp_path, manifest, words):
    write_bundle(tmp_path, manifest)
    with pytest.raises(ManifestError) as err:
        edge_sdk.load(tmp_path)
    assert all(w in str(err.value) for w in words), str(err.value)
    assert "\n" not in str(err.value)


def test_from_dict_names_the_field_without_a_bundle():
    with pytest.raises(ManifestError, match="calibration_stats/brightness/edges/2"):
        Manifest.from_dict(_hist([0, 1, BIG]))


def _one_line(result, tool: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: error:"), result.stderr
    return lines[0]


def test_edge_run_and_bench_refuse_a_huge_histogram_edge(tmp_path):
    bundle = write_bundle(tmp_path / "bundle", _hist([0, 1, BIG]))
    image = DATA / "eval" / "baboon.jpg"
    line = _one_line(run_cli("edge-run", bundle, "--source", image, "--max-frames", "1"),
                     "edge-run")
    assert "manifest.json" in line and "401-digit integer" in line, line
    line = _one_line(run_cli("edge-opt", "bench", bundle, "--data", DATA / "eval", "--runs", "2"),
                     "edge-opt")
    assert "manifest.json" in line and "401-digit integer" in line, line
