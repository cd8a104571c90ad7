"""Drift: PSI against the bundle's calibration histograms, on frames and results."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge_sdk.drift import (
    MIN_SAMPLES,
    DriftMonitor,
    DriftReport,
    Histogram,
    frame_brightness,
    level,
    psi,
)
from edge_sdk.results import Classification, Detections

EDGES = np.linspace(0, 255, 17).tolist()
# A calibration set of mid-grey images: brightness between 96 and 160.
MID = Histogram(tuple(EDGES), tuple([0.0] * 6 + [0.25] * 4 + [0.0] * 6))


def frames_of(levels):
    return [np.full((48, 64, 3), v, np.uint8) for v in levels]


@pytest.mark.parametrize(
    ("expected", "actual", "low", "high"),
    [
        ([0.25] * 4, [0.25] * 4, 0.0, 1e-9),
        ([0.25] * 4, [0.3, 0.2, 0.25, 0.25], 0.005, 0.1),  # a small shift: stable
        ([0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5], 0.25, 100.0),  # disjoint: drifted
    ],
)
def test_psi(expected, actual, low, high):
    assert low <= psi(expected, np.asarray(actual)) <= high


@pytest.mark.parametrize(
    ("value", "name"), [(None, "unknown"), (0.0, "stable"), (0.1, "shifting"), (0.3, "drifted")]
)
def test_levels(value, name):
    assert level(value) == name


def test_brightness_is_the_mean_grey_level_like_calibration(data_dir):
    """Large frames are sampled (every 8th pixel and row): still the calibration's number."""
    capture = cv2.VideoCapture(str(data_dir / "vtest_short.avi"))
    frames = [capture.read()[1] for _ in range(20)]
    capture.release()
    dark = (frames[0] * 0.3).astype(np.uint8)
    for image in [*frames, dark]:
        expected = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).mean()
        assert frame_brightness(image) == pytest.approx(expected, abs=0.5)
    half = np.zeros((480, 640, 3), np.uint8)
    half[:, 320:] = 255
    assert frame_brightness(half) == pytest.approx(127.5, abs=0.5)
    assert frame_brightness(np.full((10, 10), 77, np.uint8)) == pytest.approx(77)


def test_frames_like_the_calibration_set_are_stable_and_dark_ones_drift():
    detections = Detections.empty()
    same = DriftMonitor(MID)
    dark = DriftMonitor(MID)
    for image in frames_of(np.linspace(100, 155, 200).round()):
        same.update(image, detections)
    for image in frames_of([10] * 200):
        dark.update(image, detections)
    assert same.report().level == "stable"
    report = dark.report()
    assert report.level == "drifted" and report.brightness_psi > 0.25
    assert report.confidence_psi is None and report.samples == 200


def test_too_few_frames_say_nothing():
    monitor = DriftMonitor(MID)
    for image in frames_of([10] * (MIN_SAMPLES - 1)):
        monitor.update(image, Detections.empty())
    assert monitor.report().level == "unknown"


def test_top1_confidence_drift_for_classifiers():
    confident = Histogram(tuple(np.linspace(0, 1, 11).tolist()), tuple([0.0] * 8 + [0.5, 0.5]))
    monitor = DriftMonitor(None, confident)
    unsure = Classification(np.array([3, 1]), np.array([0.3, 0.2], np.float32), ("a", "b"))
    for image in frames_of([128] * 100):
        monitor.update(image, unsure)
    report = monitor.report()
    assert report.brightness_psi is None and report.confidence_psi > 0.25


def test_monitor_from_manifest_stats():
    class M:  # only the field DriftMonitor reads
        calibration_stats = {
            "images": 24,
            "brightness": {"edges": EDGES, "fractions": list(MID.fractions)},
        }

    monitor = DriftMonitor.from_manifest(M())
    assert monitor is not None and monitor.brightness == MID and monitor.confidence is None
    M.calibration_stats = None
    assert DriftMonitor.from_manifest(M()) is None
    M.calibration_stats = {"brightness": {"edges": [0, 1], "fractions": [1.0, 0.0]}}  # malformed
    assert DriftMonitor.from_manifest(M()) is None


def test_report_level_is_the_worse_of_the_two():
    assert DriftReport(100, 0.05, 0.4).level == "drifted"
    assert DriftReport(100, 0.15, None).level == "shifting"
