"""Shared fixtures: temporary workspaces, the real UCI data, environment for implicit/BentoML/MLflow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ONLINE_RETAIL_FILES = [
    SHARED_DATA / "online_retail_ii" / "online_retail_ii_year_2009_2010.csv.gz",
    SHARED_DATA / "online_retail" / "online_retail.csv.gz",
]


def pytest_collection_modifyitems(config, items):
    if all(p.exists() for p in ONLINE_RETAIL_FILES):
        return
    skip = pytest.mark.skip(reason=f"real data not found in {SHARED_DATA}")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def workspace(tmp_path):
    from features.workspace import Workspace

    return Workspace(tmp_path / "workspace")


@pytest.fixture(scope="session")
def real_workspace(tmp_path_factory):
    """The two UCI Online Retail files ingested once per test session (about 15 s)."""
    from features import ingest
    from features.workspace import Workspace

    ws = Workspace(tmp_path_factory.mktemp("real") / "workspace")
    ingest.save(ws, ingest.read_online_retail(ONLINE_RETAIL_FILES))
    return ws
