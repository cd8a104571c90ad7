"""A zones file that cannot be one (a folder, an unreadable path, JSON nested past the parser's
depth, coordinates no float can hold) is one ZoneError naming the file or the zone: from the
API as that error, from `edge-run --zones` and `--sources` as one line and exit 2."""

from __future__ import annotations

import json
import os

import cv2
import pytest

import edge_sdk
from edge_sdk.zones import ZoneError
from tests.conftest import error_lines, run_cli
from tests.edge_sdk.test_pipeline import synthetic_frame

BIG = 10**400  # a JSON integer Python reads exactly, but no float can hold


def _polygon(corner) -> dict:
    return {"zones": [{"name": "door", "polygon": [[0, 0], [corner, 0], [0, 10]]}]}


@pytest.fixture
def inputs(tmp_path):
    """An image, and one zones file for each way a file can fail to be one."""
    cv2.imwrite(str(tmp_path / "frame.png"), synthetic_frame(0))
    (tmp_path / "zonesdir").mkdir()
    (tmp_path / "plain").write_text("a file, so nothing can be under it")
    (tmp_path / "deep.json").write_text("[" * 100_000)
    (tmp_path / "bigint.json").write_text(json.dumps(_polygon(BIG)))
    (tmp_path / "overflow.json").write_text(json.dumps(_polygon(1)).replace("[1, 0]", "[1e400, 0]"))
    (tmp_path / "longint.json").write_text(json.dumps(_polygon(1)).replace("[1, 0]",
                                                                         f"[{'9' * 5000}, 0]"))
    os.mkfifo(tmp_path / "fifo.json")  # opening it would wait for a writer forever
    (tmp_path / "huge.json").write_text(" " * (2 << 20) + "{}")
    return tmp_path


CASES = [  # (zones file, words the one line must hold)
    ("zonesdir", ["zonesdir", "is a folder"]),
    ("plain/zones.json", ["cannot read zones file", "plain/zones.json", "Not a directory"]),
    ("deep.json", ["deep.json", "nested too deeply"]),
    ("bigint.json", ["zone 'door' polygon", "401 digits", "is not finite"]),
    ("overflow.json", ["zone 'door' polygon", "inf is not finite"]),
    ("longint.json", ["longint.json", "not valid JSON"]),
    ("fifo.json", ["fifo.json", "is not a regular file"]),
    ("/dev/zero", ["/dev/zero", "is not a regular file"]),
    ("huge.json", ["huge.json", "is larger than 1 MB"]),
]


@pytest.mark.parametrize(("name", "words"), CASES)
def test_pipeline_raises_a_zone_error(inputs, detector_bundle, name, words):
    with pytest.raises(ZoneError) as info:
        edge_sdk.Pipeline(inputs / "frame.png", detector_bundle, tracker="bytetrack",
                          zones=inputs / name)
    assert all(w in str(info.value) for w in words), str(info.value)


def _one_line(result, words):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("edge-run: error:"), result.stderr
    assert all(w in lines[0] for w in words), lines[0]


@pytest.mark.parametrize(("name", "words"), CASES[:4])
def test_edge_run_zones_file_is_one_line(inputs, detector_bundle, name, words):
    result = run_cli("edge-run", detector_bundle, "--source", inputs / "frame.png", "--zones",
                     inputs / name, "--max-frames", "1")  # fmt: skip
    _one_line(result, words)


@pytest.mark.parametrize(("name", "words"), [CASES[0], CASES[2]])
def test_edge_run_sources_zones_file_is_one_line(inputs, detector_bundle, name, words):
    sources = inputs / "sources.json"
    sources.write_text(json.dumps([{"source": str(inputs / "frame.png"), "zones": name}]))
    result = run_cli("edge-run", detector_bundle, "--sources", sources, "--max-frames", "1")
    _one_line(result, words)
