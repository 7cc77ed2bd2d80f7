"""The online feature table: every customer's scoring row and 360 row, opened in O(1) time and memory.

The service scores a customer when first asked (``serving.store.LazyStore``), from that customer's
row of the churn feature matrix. This module keeps those rows on disk in a form a worker opens
without reading them: memory-mapped files, paged in by the operating system when a row is read.

    <workspace>/features/online/<key>/
        meta.json        as-of date, data fingerprint, horizon, customers, CLV threshold of the actions
        ids.npy          customer ids, sorted, fixed-width bytes (binary search: O(log n) per id)
        scoring_row.npy  int32 per id: its row in scoring.arrow (-1: no scoring row)
        c360_row.npy     int32 per id: its row in c360.arrow (-1: no 360 row)
        scoring.arrow    Arrow IPC file: ``features.churn_features.feature_matrix`` at the as-of date
                         (every customer seen before it) with the CLV columns merged (``training.clv``)
        c360.arrow       Arrow IPC file: the customer 360 rows at the as-of date (``features.insight``)
        warm.npy         int32 positions in ids.npy, most recent buyers first (the recommendation warm-up)
        population.npz   recency, frequency, monetary of the buyers (RFM quintiles of online customers)

``key`` hashes the workspace data stamp (``serving.store.data_stamp``: mtimes and sizes, one ``stat``
per table) and the champion's horizon, so a start-up finds the table of its data without hashing or
reading the data. The table is built once per data by whoever needs it first (:func:`publish`, also
callable from the batch), under a file lock so that several workers build it once; a worker that
finds it only maps it. Nothing here logs ids or row content.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger("crmml.serving")

#: where the online tables live in a workspace (declared here, by their writer)
TABLES_DIR = ("features", "online")
#: tables kept per workspace: the newest only (a worker still serving an older one keeps its open mappings:
#: removing a mapped file does not unmap it; an older table may hold customers erased since)
KEEP = 1


def tables_root(ws) -> Path:
    return Path(ws.root).joinpath(*TABLES_DIR)


def table_key(stamp: tuple, horizon_days: int) -> str:
    return hashlib.sha256(repr((tuple(stamp), int(horizon_days))).encode()).hexdigest()[:16]


def _arrow(frame):
    """A pyarrow Table of a pandas frame (or the table itself)."""
    import pyarrow as pa

    if isinstance(frame, pa.Table):
        return frame
    return pa.Table.from_pandas(frame.reset_index(drop=True), preserve_index=False)


def _write_arrow(path: Path, table) -> None:
    import pyarrow as pa

    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=65536)


def _read_arrow(path: Path):
    import mmap

    import pyarrow as pa

    # memory-mapped, uncompressed: read_all() references the mapping, nothing is copied until a take.
    # A request reads one row, i.e. one value in each column's buffer: without MADV_RANDOM every page
    # fault would read ahead ~128 KB per column (megabytes of page cache per customer asked)
    with open(path, "rb") as fh:
        mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mapped))).read_all()


def _floats(table, name: str) -> np.ndarray:
    import pyarrow.compute as pc

    return pc.cast(table.column(name), "float64").to_numpy(zero_copy_only=False)


def write_table(directory: Path, frame, c360, meta: dict) -> None:
    """Write the files of one table into ``directory`` (which must not be in use yet).

    ``frame``: the scoring rows (pandas or pyarrow); ``c360``: the customer 360 rows (or None)."""
    import pyarrow as pa

    directory.mkdir(parents=True, exist_ok=True)
    frame = _arrow(frame)
    c360 = _arrow(c360) if c360 is not None else pa.table({"customer_id": pa.array([], pa.string())})
    frame_ids = np.asarray(frame.column("customer_id").to_numpy(zero_copy_only=False), dtype=str)
    c360_ids = np.asarray(c360.column("customer_id").to_numpy(zero_copy_only=False), dtype=str)
    ids = np.unique(np.concatenate([frame_ids, c360_ids]))  # sorted
    ids_b = np.char.encode(ids, "utf-8") if len(ids) else np.array([], dtype="S1")
    for name, sub_ids in (("scoring_row", frame_ids), ("c360_row", c360_ids)):
        at = np.full(len(ids), -1, dtype=np.int32)
        if len(sub_ids):
            at[np.searchsorted(ids, sub_ids)] = np.arange(len(sub_ids), dtype=np.int32)
        np.save(directory / f"{name}.npy", at)
    np.save(directory / "ids.npy", ids_b)
    _write_arrow(directory / "scoring.arrow", frame)
    _write_arrow(directory / "c360.arrow", c360)
    names = c360.column_names
    order = np.arange(c360.num_rows)
    if "recency_days" in names:
        recency = _floats(c360, "recency_days")
        order = np.argsort(np.where(np.isnan(recency), np.inf, recency), kind="stable")
    np.save(directory / "warm.npy", np.searchsorted(ids, c360_ids[order]).astype(np.int32))
    pop = {col: np.array([]) for col in ("recency_days", "frequency", "monetary")}
    if "frequency" in names:
        buyers = np.nan_to_num(_floats(c360, "frequency")) > 0
        pop = {col: (_floats(c360, col)[buyers] if col in names else np.array([])) for col in pop}
    np.savez(directory / "population.npz", **pop)
    (directory / "meta.json").write_text(json.dumps({**meta, "customers": int(len(ids))}, default=str))


def publish(ws, data, horizon_days: int, stamp: tuple | None = None) -> Path:
    """Build the table of ``data`` (a ``serving.store.CustomerData``) unless it exists; returns its directory.

    The scoring frame is ``data.scoring_frame(horizon_days)`` with ``data.clv`` merged
    (``training.churn.merge_clv``, as the batch scorer merges it); the CLV threshold of the suggested actions is the one
    of every scored customer (``training.retention.high_value_threshold``), as in the batch.
    """
    from training.churn import merge_clv
    from training.retention import high_value_threshold

    stamp = data.stamp if stamp is None else stamp
    final = tables_root(ws) / table_key(stamp, horizon_days)
    if (final / "meta.json").exists():
        return final
    started = time.perf_counter()
    frame = merge_clv(data.scoring_frame(horizon_days), data.clv)
    meta = {
        "as_of": str(data.as_of.date()), "fingerprint": data.fingerprint, "horizon_days": int(horizon_days),
        "high_value": high_value_threshold(frame["clv_12m"]), "sources": data.sources, "stamp": list(stamp),
    }
    tmp = final.parent / f".{final.name}.{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_table(tmp, frame, data.c360, {**meta, "build_seconds": round(time.perf_counter() - started, 2)})
    try:
        os.rename(tmp, final)
    except OSError:  # another process published the same table first
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(final.parent, keep=final)
    log.info("online table published in %.1f s", time.perf_counter() - started)
    return final


def _prune(root: Path, keep: Path) -> None:
    """Remove all but the newest tables (a worker still mapping a removed one keeps reading it)."""
    tables = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in tables[KEEP:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def open_or_publish(ws, horizon_days: int, stamp: tuple, load) -> "OnlineTable":
    """The table of this data stamp: mapped if published, else built once (``load()`` gives the
    ``CustomerData``) under a lock shared by every worker of the workspace."""
    directory = tables_root(ws) / table_key(stamp, horizon_days)
    if not (directory / "meta.json").exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        with open(directory.parent / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not (directory / "meta.json").exists():
                    publish(ws, load(), horizon_days, stamp)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    return OnlineTable(directory)


class OnlineTable:
    """Read side of one published table; every array is memory-mapped (nothing read at open)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self.ids = np.load(self.directory / "ids.npy", mmap_mode="r")
        self.scoring_row = np.load(self.directory / "scoring_row.npy", mmap_mode="r")
        self.c360_row = np.load(self.directory / "c360_row.npy", mmap_mode="r")
        self.scoring = _read_arrow(self.directory / "scoring.arrow")
        self.c360 = _read_arrow(self.directory / "c360.arrow")
        self._width = self.ids.dtype.itemsize
        self._population: dict | None = None
        self._selected: dict[tuple, object] = {}  # column selections of the scoring table
        self._batches: dict[int, tuple] = {}  # per table: its record batches and their first rows

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def as_of(self) -> pd.Timestamp:
        return pd.Timestamp(self.meta["as_of"])

    def positions(self, keys: Sequence[str]) -> np.ndarray:
        """Position of each id in ``ids.npy`` (-1 where unknown), by binary search."""
        if not len(keys) or not len(self.ids):
            return np.full(len(keys), -1, dtype=np.int64)
        encoded = [k.encode() for k in keys]
        wanted = np.array(encoded, dtype=f"S{self._width}")  # longer ids are cut: checked below
        pos = np.searchsorted(self.ids, wanted)
        pos = np.minimum(pos, len(self.ids) - 1)
        found = (self.ids[pos] == wanted) & np.array([len(e) <= self._width for e in encoded])
        return np.where(found, pos, -1)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.positions([key])[0] >= 0

    def id_at(self, positions) -> list[str]:
        return [b.decode() for b in np.asarray(self.ids[np.asarray(positions)]).tolist()]

    def _take(self, table, rows: np.ndarray) -> pd.DataFrame:
        """Rows of ``table`` in the order given, taken from the record batch holding each: ``take`` on
        the whole chunked table concatenates its chunks first (a copy of every column, per request)."""
        import pyarrow as pa

        key = id(table)
        if key not in self._batches:
            batches = table.to_batches()
            starts = np.cumsum([0] + [b.num_rows for b in batches])
            self._batches[key] = (table, batches, starts)  # the table kept: its id stays unique
        _, batches, starts = self._batches[key]
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows) or not batches:
            return table.schema.empty_table().to_pandas()
        chunk = np.searchsorted(starts, rows, side="right") - 1
        parts, placed = [], []
        for c in np.unique(chunk):
            at = np.flatnonzero(chunk == c)
            parts.append(batches[c].take(pa.array(rows[at] - starts[c], type=pa.int64())))
            placed.append(at)
        out = pa.Table.from_batches(parts, schema=table.schema)
        order = np.empty(len(rows), dtype=np.int64)
        order[np.concatenate(placed)] = np.arange(len(rows))
        return out.take(pa.array(order)).to_pandas()

    def scoring_rows(self, positions: np.ndarray, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """The scoring rows of these positions (those with one), in order; only ``columns`` if given
        (converting the few columns a model reads costs less than all of them)."""
        rows = np.asarray(self.scoring_row[positions], dtype=np.int64)
        table = self.scoring
        if columns is not None:
            key = tuple(columns)
            if key not in self._selected:
                names = set(table.column_names)
                self._selected[key] = table.select([c for c in dict.fromkeys(columns) if c in names])
            table = self._selected[key]
        return self._take(table, rows[rows >= 0])

    def c360_rows(self, positions: np.ndarray) -> pd.DataFrame:
        rows = np.asarray(self.c360_row[positions], dtype=np.int64)
        return self._take(self.c360, rows[rows >= 0])

    def warm_ids(self, limit: int) -> list[str]:
        """Up to ``limit`` ids, most recent buyers first."""
        order = np.load(self.directory / "warm.npy", mmap_mode="r")
        return self.id_at(order[:max(0, limit)])

    def population(self) -> dict[str, np.ndarray]:
        if self._population is None:
            with np.load(self.directory / "population.npz") as pop:
                self._population = {k: pop[k] for k in pop.files}
        return self._population

    def info(self) -> dict:
        return {"table": str(self.directory), "customers": len(self),
                "table_bytes": int(sum(p.stat().st_size for p in self.directory.iterdir()))}
