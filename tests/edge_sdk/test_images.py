"""Folders nobody vetted: odd files are skipped, never crash the process, block it, or lead out.

Each case here once did: a file name that is not UTF-8 made cv2.imread segfault (edge-run, a
calibration folder, `Model.predict(path)`), a FIFO named `b.jpg` blocked forever, a link
named `h.jpg` opened /etc/passwd, and a JPEG cut in half was calibrated and inferred on as
an image whose lower half is grey.
"""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest

import edge_sdk
from edge_sdk.errors import InputError
from edge_sdk.images import image_files, jpeg_truncated, read_image
from optimize.calibration import load_images
from tests.conftest import run_cli


def odd_folder(root, data_dir):
    """A folder with two good images and every kind of file that is not one."""
    good = data_dir / "eval" / "baboon.jpg"
    folder = root / "images"
    folder.mkdir()
    shutil.copy(good, folder / "a.jpg")
    shutil.copy(good, os.fsdecode(bytes(folder / "g_") + b"\xff.jpg"))  # not UTF-8
    os.mkfifo(folder / "b.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image\n")
    data = good.read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])  # an upload that did not finish
    (folder / "dir.jpg").mkdir()
    (folder / "h.jpg").symlink_to("/etc/passwd")
    outside = root / "outside.jpg"
    shutil.copy(good, outside)
    (folder / "out.jpg").symlink_to(outside)
    (folder / "in.jpg").symlink_to(folder / "a.jpg")  # a link that stays inside is kept
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    return folder


def test_only_regular_files_inside_the_folder_are_listed(tmp_path, data_dir):
    folder = odd_folder(tmp_path, data_dir)
    names = [os.fsencode(p.name) for p in image_files(folder)]
    assert names == [b"a.jpg", b"cut.jpg", b"empty.jpg", b"g_\xff.jpg", b"in.jpg", b"text.jpg"]


def test_read_image_never_trusts_the_name_or_the_type(tmp_path, data_dir):
    folder = odd_folder(tmp_path, data_dir)
    reference = read_image(folder / "a.jpg")
    assert reference is not None and reference.shape[2] == 3
    assert np.array_equal(read_image(os.fsdecode(bytes(folder / "g_") + b"\xff.jpg")), reference)
    for name in ("b.jpg", "cut.jpg", "empty.jpg", "text.jpg", "dir.jpg", "loop.jpg",
                 "nowhere.jpg"):
        assert read_image(folder / name) is None, name
    assert read_image(f"{folder}/a\0.jpg") is None  # OpenCV would cut the name at the NUL


def test_calibration_and_predict_read_such_a_folder(tmp_path, data_dir, classifier_bundle):
    folder = odd_folder(tmp_path, data_dir)
    model = edge_sdk.load(classifier_bundle)
    images = load_images(folder, model.input_spec, "calibration")
    assert len(images) == 3  # a.jpg, the non-UTF-8 copy, in.jpg
    odd = os.fsdecode(bytes(folder / "g_") + b"\xff.jpg")
    same = model.predict(folder / "a.jpg").class_ids.tolist()
    assert model.predict(odd).class_ids.tolist() == same
    with pytest.raises(InputError, match="cut.jpg: the JPEG is truncated"):
        model.predict(folder / "cut.jpg")


def test_edge_run_on_such_a_folder(tmp_path, data_dir, detector_bundle):
    folder = odd_folder(tmp_path, data_dir)
    out = tmp_path / "out.jsonl"
    result = run_cli("edge-run", detector_bundle, "--source", folder, "--jsonl", out, "--quiet",
                     timeout=120)
    assert result.returncode == 0, result.stderr  # not -11 (SIGSEGV), not a hang
    frames = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum("frame" in f for f in frames) == 3  # (then the closing events line)
    video = tmp_path / os.fsdecode(b"clip_\xff.avi")
    shutil.copy(data_dir / "vtest_short.avi", video)
    result = run_cli("edge-run", detector_bundle, "--source", video, timeout=120)
    assert result.returncode == 2 and "not valid UTF-8" in result.stderr, result.stderr


BAD_FRAMES = [None, [[0, 1], [2, 3]], b"jpeg bytes", 7, np.zeros((0, 0, 3), np.uint8),
              np.zeros((4, 0, 3), np.uint8), np.zeros(12, np.uint8), np.zeros((4, 4, 2), np.uint8),
              np.zeros((1, 4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint16),
              np.zeros((4, 4, 3), np.float32), np.full((4, 4, 3), np.nan),
              np.zeros((4, 4, 3), bool)]


def test_predict_and_infer_refuse_what_is_not_an_image(classifier_bundle):
    """One InputError naming what was expected, not AttributeError/cv2.error from inside, and
    no silent result from a 16-bit or float frame on the wrong scale."""
    model = edge_sdk.load(classifier_bundle)
    for frame in BAD_FRAMES:
        with pytest.raises(InputError, match="expected"):
            model.predict(frame)
    for grey_or_bgra in (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8)):
        model.predict(grey_or_bgra)
    for feeds in (None, [np.zeros(3)], {model.input_spec.name: None}):
        with pytest.raises(InputError):
            model.infer(feeds)


def test_export_says_which_calibration_files_it_skipped(tmp_path, data_dir):
    from tests.optimize.tiny_models import tiny_classifier

    folder = odd_folder(tmp_path, data_dir)
    out = tmp_path / "out"
    result = run_cli("edge-opt", "export", tiny_classifier(tmp_path / "tiny.onnx"), "-t",
                     "x86-fp32", "--format", "onnx", "--calib", folder, "--runs", "3", "-q",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())  # the notes under the table, wrapped
    assert "calibration: skipped 3 file(s)" in said, result.stdout
    assert "cut.jpg" in said and "empty.jpg" in said and "text.jpg" in said


def _jpegs(image: np.ndarray) -> dict[str, bytes]:
    """The JPEG layouts cameras write: baseline, progressive (several scans), restart markers,
    and an EXIF-style thumbnail (a whole JPEG, end marker included, inside an APP1 segment)."""
    def encode(*params: int) -> bytes:
        return cv2.imencode(".jpg", image, list(params))[1].tobytes()

    baseline = encode()
    small = cv2.imencode(".jpg", cv2.resize(image, (16, 16)))[1].tobytes()
    app1 = b"Exif\0\0" + small
    exif = baseline[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + baseline[2:]
    return {"baseline": baseline, "progressive": encode(cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
            "restart markers": encode(cv2.IMWRITE_JPEG_RST_INTERVAL, 2), "thumbnail": exif}


def test_a_jpeg_cut_anywhere_is_truncated_and_a_whole_one_is_not(data_dir):
    """Every cut point of every layout, and whole files with bytes after the image (a motion
    photo's video, a maker's trailer, here with a start-of-scan marker in it): a check for
    0xFFD9 anywhere would pass the cut thumbnail file, one for 0xFFD9 last fails the trailers."""
    image = cv2.resize(cv2.imread(str(data_dir / "eval" / "baboon.jpg")), (48, 40))
    trailer = b"\0\0\0\x18ftypmp42" + bytes(range(256)) + b"\xff\xda\x00\x08"
    for layout, data in _jpegs(image).items():
        assert not jpeg_truncated(data), layout
        assert not jpeg_truncated(data + trailer), layout
        cut = [k for k in range(2, len(data)) if not jpeg_truncated(data[:k])]
        assert cut == [], f"{layout}: cuts at {cut[:5]} pass as whole"
    assert not jpeg_truncated(b"\x89PNG\r\n\x1a\n")  # not a JPEG: for the decoder to judge
