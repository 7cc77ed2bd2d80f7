"""The event log: events accepted online (``POST /events``), durable before they are acknowledged.

The service validates a batch of events with the ingestion contract (:func:`validate_events`: the
same ``conform`` and row checks as ``crmml ingest``, so the same reasons), then appends the accepted
ones to one JSON-lines file in the workspace (:class:`EventLog`, ``<workspace>/events_log/events.jsonl``,
outside ``data/`` because ``data`` is swapped whole by each ingestion) under an exclusive file lock,
and ``fsync``s it before answering. The log is the truth about which ``event_id`` was accepted: a
writer reads the part of the log it has not seen yet before appending, under the same lock, so an id
already in the log (from any worker) is never appended twice.

Every ingestion (``crmml ingest``, ``crmml generate``, the ingest step of ``crmml run``) merges the
whole log into the ``events`` table it writes (:func:`merge_log`): an acknowledged event is in the
batch data from the next ingestion on, once (the log holds each ``event_id`` once), and stays there
after later ingestions of new files. The ingestion record keeps the log offset it merged, so the
service knows which logged events its batch data already holds (:func:`ingested_offset`).

A line that is not whole JSON (a writer killed in the middle of an append, before it answered) is
skipped and counted; the next append starts on a fresh line.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.contract import TABLES, conform, validate_rows

LOG_DIR = "events_log"  # <workspace>/events_log/events.jsonl: written by EventLog.append only
LOG_FILE = "events.jsonl"
MAX_EVENTS = 1000  # events per POST /events
EVENT_FIELDS = ("event_id", *TABLES["events"].column_names)
ID_REASON = "missing_event_id"
SOURCE = "events_api"  # the quarantine/lineage name of this source
ERASED = {"erased": 1}  # what EventLog.erase leaves of a forgotten customer's line


def log_path(ws) -> Path:
    return ws.root / LOG_DIR / LOG_FILE


# --------------------------------------------------------------------------------------------
# validation: the ingestion contract, one reason per rejected event
# --------------------------------------------------------------------------------------------
def _timestamp(value) -> pd.Timestamp:
    """ISO 8601 text -> a naive timestamp; an offset is converted to UTC, then dropped (the workspace keeps
    naive shop-local time); what cannot be read is NaT (``unparseable_timestamp``)."""
    if value is None or not isinstance(value, str) or not value.strip():
        return pd.NaT
    try:
        ts = pd.Timestamp(value.strip())
    except (ValueError, TypeError, OverflowError):
        return pd.NaT
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def _timestamps(values: pd.Series) -> pd.Series:
    return pd.Series([_timestamp(v) for v in values], index=values.index, dtype="datetime64[us]")


def validate_events(events: list[dict], now: pd.Timestamp | None = None) -> tuple[pd.DataFrame, list[dict]]:
    """Split raw events into the accepted canonical rows (+ ``event_id``) and the rejected ones.

    The checks and reasons are the ingestion contract's (``features.contract.validate_rows``); an event
    without ``event_id`` is rejected as ``missing_event_id``. Returns ``(accepted, rejected)`` with
    ``rejected`` a list of ``{"index", "event_id", "reason"}`` (index: position in ``events``).
    """
    raw = pd.DataFrame.from_records(events, columns=list(EVENT_FIELDS)) if events else pd.DataFrame(columns=list(EVENT_FIELDS))
    raw["timestamp"] = _timestamps(raw["timestamp"])
    canonical = conform("events", raw, SOURCE)
    ids = raw["event_id"].astype("string").str.strip()
    reasons = pd.Series(pd.NA, index=raw.index, dtype="string")
    reasons[ids.isna() | (ids == "")] = ID_REASON
    # with the event id as a column, only a repeated event (same id, same content) is a duplicate_line
    ok = reasons.isna()
    checked = canonical[ok].assign(event_id=ids[ok])
    reasons[ok] = validate_rows("events", checked, now)
    accepted = canonical[reasons.isna()].assign(event_id=ids[reasons.isna()])
    rejected = [{"index": int(i), "event_id": None if pd.isna(ids[i]) else str(ids[i]), "reason": str(r)}
                for i, r in reasons.dropna().items()]
    return accepted.reset_index(drop=True), rejected


# --------------------------------------------------------------------------------------------
# the log
# --------------------------------------------------------------------------------------------
def _line(row: dict) -> dict:
    out = {}
    for name in EVENT_FIELDS:
        v = row.get(name)
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            continue
        out[name] = v.isoformat() if isinstance(v, pd.Timestamp) else (float(v) if isinstance(v, (float, np.floating)) else str(v))
    return out


def parse_lines(data: bytes) -> tuple[list[dict], int]:
    """Events of a chunk of the log (whole lines only) and the number of lines that are not whole JSON."""
    out, bad = [], 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict) and rec.get("event_id"):
            out.append(rec)
        elif rec == ERASED:  # a line `crmml forget` blanked: not an event, not a broken line either
            continue
        else:
            bad += 1
    return out, bad


@dataclass
class Tail:
    """What one reader has taken from the log so far: the byte offset and the ids it saw."""

    offset: int = 0
    seen: set = field(default_factory=set)
    bad_lines: int = 0


class EventLog:
    """Append-only JSON lines with an exclusive lock, ``fsync`` before returning."""

    def __init__(self, ws):
        self.path = log_path(ws)

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the lock

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def read_from(self, offset: int, end: int | None = None) -> tuple[list[dict], int, int]:
        """Events of the whole lines in ``[offset, end)``: (events, new offset after the last whole line, bad lines)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(-1 if end is None else max(0, end - offset))
        except FileNotFoundError:
            return [], offset, 0
        cut = data.rfind(b"\n") + 1  # a line still being written is read next time
        events, bad = parse_lines(data[:cut])
        return events, offset + cut, bad

    def append(self, rows: list[dict], tail: Tail) -> tuple[list[dict], list[dict], list[dict]]:
        """Append the rows whose ``event_id`` is not in the log yet; durable when this returns.

        ``tail`` is the caller's read position: the log after it is read first (under the lock), its
        events returned as ``others`` (appended by other writers) and their ids added to ``tail.seen``.
        Returns ``(appended, duplicates, others)``.
        """
        with self._locked() as fd:
            others, tail.offset, bad = self.read_from(tail.offset)
            tail.bad_lines += bad
            tail.seen.update(e["event_id"] for e in others)
            appended, duplicates = [], []
            for row in rows:
                (duplicates if row["event_id"] in tail.seen else appended).append(row)
                tail.seen.add(row["event_id"])
            if appended:
                size = os.fstat(fd).st_size
                head = b""
                if size:
                    os.lseek(fd, size - 1, os.SEEK_SET)
                    if os.read(fd, 1) != b"\n":  # a torn line of a killed writer: start a new one
                        head = b"\n"
                lines = [_line(r) for r in appended]
                payload = head + b"".join(json.dumps(x, separators=(",", ":")).encode() + b"\n" for x in lines)
                os.write(fd, payload)  # O_APPEND: one write at the end
                os.fsync(fd)
                appended = lines
                tail.offset = size + len(payload)
            return appended, duplicates, others

    def erase(self, customer_ids: set[str]) -> int:
        """Overwrite the lines of these customers with ``ERASED`` padded to the same length; return how many.

        In place and length-preserving because every reader (a serving worker's ``Tail``, the ingestion's
        merged offset) holds byte offsets into the log: a rewritten, shorter file would shift them.
        """
        if not self.path.exists():
            return 0
        marker = json.dumps(ERASED, separators=(",", ":")).encode()
        erased = 0
        with self._locked():  # the appenders' lock; a second descriptor without O_APPEND writes in place
            data = self.path.read_bytes()
            with open(self.path, "r+b") as fh:
                pos = 0
                for line in data.split(b"\n"):
                    try:
                        rec = json.loads(line) if line.strip() else None
                    except ValueError:
                        rec = None
                    if isinstance(rec, dict) and str(rec.get("customer_id")) in customer_ids:
                        fh.seek(pos)
                        fh.write(marker.ljust(len(line)) if len(line) >= len(marker) else b" " * len(line))
                        erased += 1
                    pos += len(line) + 1
                fh.flush()
                os.fsync(fh.fileno())
        return erased


# --------------------------------------------------------------------------------------------
# ingestion: the log joins the batch data
# --------------------------------------------------------------------------------------------
def log_frame(ws) -> tuple[pd.DataFrame, dict]:
    """The whole log as canonical events (+ ``event_id``), each id once; and its lineage record."""
    log = EventLog(ws)
    end = log.size()
    events, offset, bad = log.read_from(0, end)
    frame = pd.DataFrame.from_records(events, columns=list(EVENT_FIELDS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], errors="coerce")
    canonical = conform("events", frame, str(log.path))
    canonical["event_id"] = frame["event_id"].astype("string")
    canonical = canonical.drop_duplicates("event_id", keep="first").reset_index(drop=True)
    return canonical, {"path": str(log.path), "offset": int(offset), "events": int(len(canonical)),
                       "unreadable_lines": int(bad)}


def log_state(ws) -> dict:
    """Size of the log (an input of the cached ingest step of ``crmml run``)."""
    return {"path": str(log_path(ws)), "bytes": EventLog(ws).size()}


def merge_log(ws, tables: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], dict | None]:
    """``tables`` with the logged events added to ``events`` (and their new customers and items).

    Returns the tables and the lineage record of the merge (None without a log).
    """
    if not log_path(ws).exists():
        return tables, None
    logged, record = log_frame(ws)
    if logged.empty:
        return tables, record
    out = dict(tables)
    base = tables["events"]
    out["events"] = pd.concat([base, logged[base.columns]], ignore_index=True)
    if "customers" in tables:
        cust = tables["customers"]
        new = logged[~logged["customer_id"].isin(cust["customer_id"])]
        if len(new):
            first = new.groupby("customer_id", sort=True)["timestamp"].min().reset_index(name="first_seen")
            out["customers"] = pd.concat([cust, conform("customers", first, str(record["path"]))], ignore_index=True)
    if "items" in tables:
        items = tables["items"]
        new_items = logged["item_id"].dropna()
        new_items = new_items[~new_items.isin(items["item_id"])].unique()
        if len(new_items):
            extra = conform("items", pd.DataFrame({"item_id": new_items}), str(record["path"]))
            out["items"] = pd.concat([items, extra], ignore_index=True)
    return out, record


def ingested_offset(ws) -> int:
    """The log offset the workspace's batch data holds (0 if no ingestion merged the log)."""
    for rec in reversed(ws.ingestions()):
        return int((rec.get("events_log") or {}).get("offset", 0))
    return 0
