"""`crmml forget`: erase customers from a workspace, keep them out of future ingestions, audit it.

What is erased: every row of theirs in the canonical tables (a new data version, switched in one rename;
the previous versions are removed), the quarantine (raw lines that hold their id), every Parquet/CSV file
under ``features/``, ``outputs/``, ``rejected/`` and ``synthetic/`` (feature matrices, scores, the ground
truth), and their lines in the event log of ``POST /events`` (blanked in place: readers hold byte offsets). What is kept: a *token* per customer (keyed hash, or SHA-256 without a key) in ``forgotten.json``
so that a later ingestion drops their rows (reason ``forgotten``), and one audit record per erasure in
``audit.jsonl`` (when, who ran it, rows removed per file; tokens, never the ids). Models already trained
still hold what they learned from them: see docs/data.md ("Forgetting a customer").
"""

from __future__ import annotations

import getpass
import hashlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from features import mapping as mappings
from features.event_log import EventLog, log_path
from features.workspace import Workspace, atomic_write, atomic_write_json

ID_COLUMNS = ("customer_id", "user_id")
# Folders holding files derived from the tables (feature matrices, scores, refused quarantines, ground truth).
DERIVED_FOLDERS = ("features", "outputs", "rejected", "synthetic", "reports")


def forgotten_path(ws: Workspace) -> Path:
    return ws.root / "forgotten.json"


def audit_path(ws: Workspace) -> Path:
    return ws.root / "audit.jsonl"


def token(customer_id: str, key: bytes | None) -> str:
    """What is kept of a forgotten id: its keyed hash (or SHA-256 when no key is set), never the id."""
    if key is not None:
        return mappings.pseudonym(str(customer_id), key)
    return hashlib.sha256(f"crmml-forget:{customer_id}".encode()).hexdigest()[:32]


def forgotten_tokens(ws: Workspace) -> set[str]:
    """Tokens of every customer forgotten in this workspace (read by each ingestion)."""
    path = forgotten_path(ws)
    return set(json.loads(path.read_text())["tokens"]) if path.exists() else set()


def is_forgotten(ids: pd.Series, tokens: set[str], key: bytes | None) -> pd.Series:
    """Whether each id (in clear or a pseudonym) is one of the forgotten ``tokens``."""
    if not tokens:
        return pd.Series(False, index=ids.index)
    unique = ids.dropna().astype(str).unique()
    hit = {x for x in unique if token(x, key) in tokens}
    return ids.isin(hit).fillna(False).astype(bool)


def _matches(values, targets: set[str]) -> bool:
    for v in values:
        text = str(v)
        if text in targets or text.removesuffix(".0") in targets:
            return True
    return False


def _filter(df: pd.DataFrame, targets: set[str]) -> pd.DataFrame:
    """``df`` without the rows of ``targets``: by id column, or by any value of a quarantined raw line."""
    keep = pd.Series(True, index=df.index)
    for col in ID_COLUMNS:
        if col in df.columns:
            keep &= ~df[col].astype("string").isin(targets).fillna(False).astype(bool)
    if df.index.name in ID_COLUMNS:
        keep &= ~df.index.astype(str).isin(targets)
    if "raw" in df.columns and "reason" in df.columns:  # a quarantine: the raw line as JSON
        def holds(raw) -> bool:
            try:
                data = json.loads(raw)
            except (TypeError, ValueError):
                return False
            return _matches(data.values() if isinstance(data, dict) else [data], targets)
        keep &= ~df["raw"].map(holds).astype(bool)
    return df[keep]


def forget(ws: Workspace, ids: list[str]) -> dict:
    """Erase customers ``ids`` from the workspace; return the audit record (rows removed per file)."""
    key = mappings.pii_key(ws.root)
    ids = [str(i) for i in ids]
    targets = set(ids) | ({mappings.pseudonym(i, key) for i in ids} if key is not None else set())
    removed: dict[str, int] = {}
    dropped: list[str] = []  # derived tables removed whole
    tables: dict[str, pd.DataFrame] = {}
    if ws.data_dir.is_dir():
        for path in sorted(ws.data_dir.glob("*.parquet")):
            df = pd.read_parquet(path)
            kept = _filter(df, targets)
            if len(kept) < len(df):
                removed[f"data/{path.name}"] = len(df) - len(kept)
                tables[path.stem] = kept
    if tables:  # one new data version; the old ones (which still hold the rows) are removed by the switch
        ws.publish_tables(tables)
    for folder in DERIVED_FOLDERS:
        # memory-mapped tables (the service's online table: Arrow files with id arrays beside them) are
        # not filtered in place but removed whole: they are derived, and rebuilt from the data on need
        for arrow in sorted((ws.root / folder).rglob("*.arrow")):
            if arrow.parent.is_dir():
                dropped.append(str(arrow.parent.relative_to(ws.root)))
                shutil.rmtree(arrow.parent, ignore_errors=True)
        for path in sorted((ws.root / folder).rglob("*")):
            if path.suffix not in (".parquet", ".csv") or not path.is_file():
                continue
            df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
            kept = _filter(df, targets)
            if len(kept) < len(df):
                removed[str(path.relative_to(ws.root))] = len(df) - len(kept)
                if path.suffix == ".parquet":  # an id index stays an index
                    atomic_write(path, lambda tmp, k=kept: k.to_parquet(tmp, index=k.index.name in ID_COLUMNS))
                else:
                    atomic_write(path, lambda tmp, k=kept: k.to_csv(tmp, index=False))
    erased = EventLog(ws).erase(targets)  # events sent to POST /events, not yet (or already) ingested
    if erased:
        removed[str(log_path(ws).relative_to(ws.root))] = erased
    tokens = sorted(forgotten_tokens(ws) | {token(t, key) for t in targets})
    atomic_write_json(forgotten_path(ws), {"keyed": key is not None, "tokens": tokens})
    record = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "action": "forget",
        "by": getpass.getuser(),
        "customers": len(ids),
        "tokens": sorted(token(i, key) for i in ids),
        "rows_removed": removed,
        **({"tables_removed": dropped} if dropped else {}),
    }
    path = audit_path(ws)
    previous = path.read_text() if path.exists() else ""
    atomic_write(path, lambda tmp: tmp.write_text(previous + json.dumps(record) + "\n"))
    return record
