"""The workspace: where ingested tables, features, models, outputs and the MLflow store live.

Layout under the root (default ``<repo>/workspace``, or ``$CRMML_WORKSPACE``)::

    data/<table>.parquet      canonical tables (events, customers, items, ...) and quarantine;
                              ``data`` is a link to one complete version in ``data.versions/`` (see
                              ``Workspace.publish_tables``)
    features/<name>.parquet   feature snapshots, labels, customer 360, interaction data
    rejected/                 the quarantine of an ingestion refused for too many broken rows
    ingestions.json           one record per ingestion: source files, content hashes, counts, time
    mlflow.db, mlartifacts/   the embedded MLflow tracking and registry store
    outputs/, reports/        batch scores (one run folder per run, see pipelines.score) and reports
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable
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


def switch_link(link: Path, target: str | Path) -> None:
    """Point the symbolic link ``link`` at ``target`` with one rename: readers see the old or the new target."""
    tmp = link.parent / f".{link.name}.link-{secrets.token_hex(4)}"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale(folder: Path, prefix: str) -> list[str]:
    """Remove what killed writers left in ``folder`` (files or folders named ``prefix*``); return their names.

    One writer per folder is assumed (one ``crmml`` run per workspace at a time), so anything with the
    prefix when a new run starts is stale.
    """
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if p.name.startswith(prefix))
    for path in stale:
        _remove(path)
    return [p.name for p in stale]


def publish_version(
    versions: Path, pointer: Path, fill: Callable[[Path], None], staging_in: Path | None = None,
    staging_prefix: str = ".staging-",
) -> Path:
    """Build a complete new folder with ``fill(folder)``, then switch the link ``pointer`` to it in one rename.

    Files read through ``pointer`` are all of the previous version or all of the new one, never a mix, and
    a writer killed at any moment leaves the previous version in place. The folder is built as
    ``staging_in/<staging_prefix>*`` (default: inside ``versions``); stale staging folders of killed runs
    and versions no longer pointed to are removed. A ``pointer`` that is still a plain folder (a workspace
    from before versions) is moved into ``versions`` first.
    """
    staging_in = staging_in or versions
    versions.mkdir(parents=True, exist_ok=True)
    staging_in.mkdir(parents=True, exist_ok=True)
    remove_stale(staging_in, staging_prefix)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix, dir=staging_in))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    final = versions / f"{stamp}-{secrets.token_hex(3)}"
    try:
        fill(staging)
        os.chmod(staging, 0o755)  # noqa: S103 - mkdtemp makes folders private; these are shared outputs
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if pointer.is_dir() and not pointer.is_symlink():
        os.replace(pointer, versions / f"{stamp}-before")
    switch_link(pointer, os.path.relpath(final, pointer.parent))
    for old in versions.iterdir():
        if old != final and old != pointer and not old.name.startswith("."):
            _remove(old)
    return final


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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

    @property
    def data_versions_dir(self) -> Path:
        return self.root / "data.versions"

    def publish_tables(self, tables: dict[str, pd.DataFrame], replace: Iterable[str] = ()) -> Path:
        """Replace data tables all at once: the tables named in ``replace`` go, ``tables`` are written.

        The new set (the tables kept from the current data folder plus ``tables``) is written completely
        into a new version folder first; then ``data`` is switched to it in one rename. Until then, and if
        the writer is killed, the workspace keeps its previous tables whole.
        """
        gone = set(replace) | set(tables)
        current = self.data_dir

        def fill(folder: Path) -> None:
            if current.is_dir():
                for path in current.iterdir():
                    if path.is_file() and not path.name.startswith(".") and path.stem not in gone:
                        _link_or_copy(path, folder / path.name)
            for name, df in tables.items():
                df.to_parquet(folder / f"{name}.parquet", index=False)

        return publish_version(self.data_versions_dir, current, fill)

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
