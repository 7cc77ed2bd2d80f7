"""The workspace: where ingested tables, features, models, outputs and the MLflow store live.

Layout under the root (default ``<repo>/workspace``, or ``$CRMML_WORKSPACE``)::

    data/<table>.parquet      canonical tables (events, customers, items, ...) and quarantine
    features/<name>.parquet   feature snapshots, labels, customer 360, interaction data
    ingestions.json           one record per ingestion: source files, content hashes, counts, time
    mlflow.db, mlartifacts/   the embedded MLflow tracking and registry store
    outputs/, reports/        batch scores and reports
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parent.parent


def default_root() -> Path:
    return Path(os.environ.get("CRMML_WORKSPACE") or REPO_ROOT / "workspace")


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are shared outputs
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data) -> None:
    """``data`` as indented JSON at ``path`` (non-JSON values as ``str``), written with :func:`atomic_write`."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str)))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class Workspace:
    """A folder holding one shop's data, features, models and outputs."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).resolve() if root is not None else default_root().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- tables ---------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def outputs_dir(self) -> Path:
        return self.root / "outputs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def table_path(self, name: str, kind: str = "data") -> Path:
        return self.root / kind / f"{name}.parquet"

    def has_table(self, name: str, kind: str = "data") -> bool:
        return self.table_path(name, kind).exists()

    def read_table(self, name: str, kind: str = "data", columns: list[str] | None = None) -> pd.DataFrame:
        path = self.table_path(name, kind)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no '{name}' table in workspace {self.root}; run `crmml ingest` first")
        return pd.read_parquet(path, columns=columns)

    def write_table(self, name: str, df: pd.DataFrame, kind: str = "data") -> Path:
        path = self.table_path(name, kind)
        atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))
        return path

    def remove_table(self, name: str, kind: str = "data") -> None:
        self.table_path(name, kind).unlink(missing_ok=True)

    # -- lineage --------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "ingestions.json"

    def ingestions(self) -> list[dict]:
        if not self.manifest_path.exists():
            return []
        return json.loads(self.manifest_path.read_text())

    def record_ingestion(self, record: dict) -> dict:
        record = {"ingested_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **record}
        records = self.ingestions() + [record]
        atomic_write(self.manifest_path, lambda tmp: tmp.write_text(json.dumps(records, indent=2, default=str)))
        return record

    def data_fingerprint(self) -> str:
        """Content hash of the canonical tables now in the workspace (for caching and lineage)."""
        digest = hashlib.sha256()
        for path in sorted(self.data_dir.glob("*.parquet")):
            digest.update(path.name.encode())
            digest.update(file_sha256(path).encode())
        return digest.hexdigest()

    # -- MLflow ---------------------------------------------------------------
    @property
    def mlflow_uri(self) -> str:
        """Tracking/registry URI: $MLFLOW_TRACKING_URI, else an absolute SQLite file in the workspace."""
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"
