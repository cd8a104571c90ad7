"""`edge_sdk.load(bundle, threads=...)` takes None (the bundle's profile) or a whole number of
threads from 1 to 1024; anything else is one EdgeError naming the value, before the runtime
sees it (a TypeError deep inside it, or -1 threads accepted)."""

from __future__ import annotations

import numpy as np
import pytest

import edge_sdk
from edge_sdk.errors import EdgeError
from tests.edge_sdk.bundles import write_bundle


@pytest.mark.parametrize(("threads", "shown"), [("4", "'4'"), (-1, "-1"), (0, "0"), (2.0, "2.0"),
                                                (True, "True"), (10**400, "a huge integer")],
                         ids=["str", "-1", "0", "float", "bool", "400 digits"])
def test_bad_threads_are_one_edge_error(tmp_path, threads, shown):
    with pytest.raises(EdgeError, match=r"threads must be a whole number from 1 to 1024") as err:
        edge_sdk.load(write_bundle(tmp_path), threads=threads)
    assert str(err.value).endswith(f"got {shown}"), str(err.value)


@pytest.mark.parametrize("threads", [None, 1, 2])
def test_good_threads_load(tmp_path, threads):
    model = edge_sdk.load(write_bundle(tmp_path), threads=threads)
    assert model.manifest.runtime.threads >= 1
    assert len(model.predict(np.full((40, 50, 3), 90, np.uint8)).class_ids) == 3
