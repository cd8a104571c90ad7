"""Tiny real bundles (a detector-shaped and a classifier ONNX model) shared by the runtime tests."""

from __future__ import annotations

import pytest

import edge_sdk
from tests.edge_sdk.batched_bundle import batched_copy
from tests.edge_sdk.test_pipeline import tiny_bundle


@pytest.fixture(scope="session")
def detector_bundle(tmp_path_factory, data_dir):
    return tiny_bundle("detect", tmp_path_factory, data_dir)


@pytest.fixture(scope="session")
def classifier_bundle(tmp_path_factory, data_dir):
    return tiny_bundle("classify", tmp_path_factory, data_dir)


@pytest.fixture(scope="module")
def batched_path(detector_bundle, tmp_path_factory):
    """The tiny detector with a dynamic batch dimension (tests/edge_sdk/batched_bundle.py)."""
    return batched_copy(detector_bundle, tmp_path_factory.mktemp("batched") / "bundle")


@pytest.fixture(scope="module")
def batched(batched_path):
    return edge_sdk.load(batched_path, threads=1)
