"""Tiny real bundles (a detector-shaped and a classifier ONNX model) shared by the runtime tests."""

from __future__ import annotations

import pytest

from tests.edge_sdk.test_pipeline import tiny_bundle


@pytest.fixture(scope="session")
def detector_bundle(tmp_path_factory, data_dir):
    return tiny_bundle("detect", tmp_path_factory, data_dir)


@pytest.fixture(scope="session")
def classifier_bundle(tmp_path_factory, data_dir):
    return tiny_bundle("classify", tmp_path_factory, data_dir)
