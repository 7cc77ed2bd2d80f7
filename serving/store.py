"""The online store: per-customer records the service answers from, without touching a database.

What a request needs from a customer is the churn score with its reasons and the 360 profile, as
JSON records. :class:`LazyStore` (what the service uses) computes them when a customer is first asked
for, from the customer's rows of the memory-mapped online table (``serving.table``), and keeps them
(:class:`LruRecords` in the worker, or :class:`RedisRecordCache` shared by every worker): start-up
scores no one, and its time and memory do not grow with the number of customers.

The snapshot design (``CRMML_SCORES=startup``) encodes every customer's records when the state loads
and keeps them in compact arrays keyed by id, so a request is a dict lookup plus a slice of a byte buffer:

    index:   dict  customer_id -> row number
    blob:    bytes all records of one kind, concatenated          (one per kind: "churn", "profile")
    offsets: array('q') of n+1 start offsets into the blob        (8 bytes per customer)
    columns: numpy arrays of a few typed fields (churn_probability float32, risk tier codes int8, ...)

:class:`OnlineStore` is the read interface the service uses; :class:`MemoryStore` implements it
in process memory (the default). :class:`RedisStore` implements the same interface on Redis for
customer bases larger than one process's memory: the same JSON records under
``<prefix>:<generation>:<kind>:<id>``, published generation by generation so that a reload
flips one pointer key (``<prefix>:current``) and readers never see a half-written state.
``crmml serve --store redis`` uses it (the ``redis`` client; tests run a real ``redis-server``).
:class:`OverlayStore` puts the records of customers with online events (``serving.events``) on top
of either.

Records are plain JSON (``NaN`` written as ``null``); :func:`encode_records` builds them
column-wise from a pandas frame in one pass at load time. Nothing here logs ids or record content.
"""

from __future__ import annotations

import json
import math
import os
import threading
from abc import ABC, abstractmethod
from array import array
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from features.dates import workspace_as_of as as_of_date

KINDS = ("churn", "profile")


# --------------------------------------------------------------------------------------------
# JSON encoding (load time, not per request)
# --------------------------------------------------------------------------------------------
def plain(value: Any) -> Any:
    """A JSON-ready Python value: numpy scalars and arrays unwrapped, NaN/NaT/NA -> None, dates -> ISO."""
    if value is None:
        return None
    if isinstance(value, (str, bool)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        return [plain(v) for v in value]
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        ts = pd.Timestamp(value)
        return None if pd.isna(ts) else ts.isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def column_values(series: pd.Series) -> list:
    """A column as a list of JSON-ready values (fast paths for plain numeric and string columns)."""
    if pd.api.types.is_bool_dtype(series.dtype) and not series.isna().any():
        return series.astype(bool).tolist()
    if pd.api.types.is_integer_dtype(series.dtype) and not series.isna().any():
        return series.astype("int64").tolist()
    if pd.api.types.is_float_dtype(series.dtype):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        out = values.tolist()
        if not np.isfinite(values).all():
            bad = np.flatnonzero(~np.isfinite(values))
            for i in bad.tolist():
                out[i] = None
        return out
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return [None if pd.isna(v) else pd.Timestamp(v).isoformat() for v in series.tolist()]
    return [plain(v) for v in series.tolist()]


_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON of a JSON-ready object."""
    return _dumps(obj).encode("utf-8")


def encode_records(records: Iterable[Mapping[str, Any]]) -> list[bytes]:
    return [dumps(r) for r in records]


# --------------------------------------------------------------------------------------------
# the interface
# --------------------------------------------------------------------------------------------
class OnlineStore(ABC):
    """Read side of the online store, as used per request.

    Every method takes string ids and returns the pre-encoded JSON record (``bytes``) or ``None``
    for an unknown id. Implementations must be safe to call from several threads at once and must
    never log ids or records.
    """

    backend = "abstract"
    computes = False  # True: a read may score customers (call it off the event loop)

    @abstractmethod
    def get(self, kind: str, key: str) -> bytes | None:
        """The record of ``kind`` (``"churn"`` or ``"profile"``) for ``key``, or None."""

    def get_many(self, kind: str, keys: Sequence[str]) -> list[bytes | None]:
        """Records for many ids, in order (None where unknown). Implementations batch this."""
        return [self.get(kind, key) for key in keys]

    @abstractmethod
    def __contains__(self, key: object) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...

    def column(self, name: str) -> np.ndarray | None:
        """A typed column over all customers (for summaries); None if this store does not keep it."""
        return None

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "customers": len(self)}

    def close(self) -> None:  # pragma: no cover - nothing to release in memory
        pass


# --------------------------------------------------------------------------------------------
# in-process memory
# --------------------------------------------------------------------------------------------
class _Blob:
    """One kind of record for all customers: one bytes buffer and n+1 offsets."""

    __slots__ = ("data", "offsets")

    def __init__(self, records: Sequence[bytes]):
        lengths = np.fromiter((len(r) for r in records), dtype=np.int64, count=len(records))
        offsets = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        self.data = b"".join(records)
        self.offsets = array("q", offsets.tobytes())  # array indexing gives Python ints fast

    def at(self, i: int) -> bytes | None:
        return self.data[self.offsets[i]:self.offsets[i + 1]] or None

    @property
    def nbytes(self) -> int:
        return len(self.data) + self.offsets.itemsize * len(self.offsets)


class MemoryStore(OnlineStore):
    """All records in this process: ``dict`` id -> row, one byte buffer + offsets per kind.

    An empty record (``b""``) means "no record of this kind for this id" (``get`` returns None).
    """

    backend = "memory"

    def __init__(
        self,
        ids: Sequence[str],
        records: Mapping[str, Sequence[bytes]],
        columns: Mapping[str, np.ndarray] | None = None,
    ):
        ids = [str(i) for i in ids]
        self._index: dict[str, int] = {key: i for i, key in enumerate(ids)}
        if len(self._index) != len(ids):
            raise ValueError("MemoryStore: duplicate ids")
        self._blobs: dict[str, _Blob] = {}
        for kind, recs in records.items():
            if len(recs) != len(ids):
                raise ValueError(f"MemoryStore: {len(recs)} {kind} records for {len(ids)} ids")
            self._blobs[kind] = _Blob(recs)
        self._columns = {name: np.asarray(col) for name, col in (columns or {}).items()}
        for name, col in self._columns.items():
            if len(col) != len(ids):
                raise ValueError(f"MemoryStore: column {name} has {len(col)} values for {len(ids)} ids")

    def get(self, kind: str, key: str) -> bytes | None:
        i = self._index.get(key)
        return None if i is None else self._blobs[kind].at(i)

    def get_many(self, kind: str, keys: Sequence[str]) -> list[bytes | None]:
        blob = self._blobs[kind]
        data, offsets, index = blob.data, blob.offsets, self._index
        out: list[bytes | None] = []
        append = out.append
        for key in keys:
            i = index.get(key)
            append(None if i is None else (data[offsets[i]:offsets[i + 1]] or None))
        return out

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def row(self, key: str) -> int | None:
        return self._index.get(key)

    def export(self) -> tuple[list[str], dict[str, list[bytes]]]:
        """Ids and every kind's records, in order (what ``RedisStore.publish`` takes)."""
        ids = list(self._index)
        return ids, {kind: [blob.at(i) or b"" for i in range(len(ids))] for kind, blob in self._blobs.items()}

    def column(self, name: str) -> np.ndarray | None:
        return self._columns.get(name)

    def info(self) -> dict[str, Any]:
        nbytes = sum(b.nbytes for b in self._blobs.values()) + sum(c.nbytes for c in self._columns.values())
        return {
            "backend": self.backend,
            "customers": len(self),
            "kinds": sorted(self._blobs),
            "record_bytes": int(nbytes),
        }


# --------------------------------------------------------------------------------------------
# Redis (optional)
# --------------------------------------------------------------------------------------------
class RedisStore(OnlineStore):
    """The same records in Redis, for customer bases larger than one process's memory.

    Layout: ``<prefix>:<generation>:<kind>:<id>`` -> JSON bytes; ``<prefix>:<generation>:meta``
    -> JSON (customer count); ``<prefix>:current`` -> the generation readers use. :meth:`publish`
    writes a whole new generation in pipelined batches, then flips ``current`` (old generations
    expire after ``keep_seconds``). A reader binds to one generation when it is created, like the
    in-memory state object, so a reload never mixes two generations within one state.

    ``client`` is a ``redis.Redis`` (``redis.Redis.from_url("redis://127.0.0.1:6379/0")``) or
    anything with ``get``, ``mget``, ``set``, ``expire``, ``scan_iter`` and ``pipeline``.
    """

    backend = "redis"
    BATCH = 1000

    def __init__(self, client: Any, prefix: str = "crmml", generation: str | None = None):
        self.client = client
        self.prefix = prefix
        if generation is None:
            current = client.get(f"{prefix}:current")
            if current is None:
                raise LookupError(f"redis: no published generation under {prefix}:current")
            generation = current.decode() if isinstance(current, bytes) else str(current)
        self.generation = generation
        meta = client.get(self._key("meta"))
        self._meta = json.loads(meta) if meta else {}

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, self.generation, *parts))

    @classmethod
    def publish(
        cls,
        client: Any,
        ids: Sequence[str],
        records: Mapping[str, Sequence[bytes]],
        generation: str,
        prefix: str = "crmml",
        keep_seconds: int = 3600,
    ) -> "RedisStore":
        """Write a full generation, then make it current; returns a reader bound to it."""
        previous = client.get(f"{prefix}:current")
        for kind, recs in records.items():
            if len(recs) != len(ids):
                raise ValueError(f"RedisStore: {len(recs)} {kind} records for {len(ids)} ids")
            for start in range(0, len(ids), cls.BATCH):
                pipe = client.pipeline(transaction=False)
                for key, rec in zip(ids[start:start + cls.BATCH], recs[start:start + cls.BATCH]):
                    pipe.set(f"{prefix}:{generation}:{kind}:{key}", rec)
                pipe.execute()
        client.set(f"{prefix}:{generation}:meta", json.dumps({"customers": len(ids), "kinds": sorted(records)}))
        client.set(f"{prefix}:current", generation)
        if previous is not None:
            old = previous.decode() if isinstance(previous, bytes) else str(previous)
            if old != generation:
                for key in client.scan_iter(match=f"{prefix}:{old}:*", count=1000):
                    client.expire(key, keep_seconds)
        return cls(client, prefix, generation)

    @classmethod
    def publish_once(cls, client: Any, generation: str, build, prefix: str = "crmml",
                     wait_seconds: float = 900.0) -> "RedisStore":
        """A reader of ``generation``, published by the first worker that asks for it.

        ``build()`` gives the ``MemoryStore`` to publish; it runs in one worker only (a ``SET NX``
        lock): the others wait for its ``meta`` key and then only bind, without computing anything.
        """
        import time

        meta, lock = f"{prefix}:{generation}:meta", f"{prefix}:{generation}:lock"
        deadline = time.monotonic() + wait_seconds
        while client.get(meta) is None:
            if client.set(lock, b"1", nx=True, ex=int(wait_seconds)):
                try:
                    if client.get(meta) is None:
                        ids, records = build().export()
                        return cls.publish(client, ids, records, generation, prefix)
                finally:
                    client.delete(lock)
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis: generation {generation} not published within {wait_seconds:.0f} s")
            time.sleep(0.2)
        if client.get(f"{prefix}:current") in (None, b""):
            client.set(f"{prefix}:current", generation)
        return cls(client, prefix, generation)

    def get(self, kind: str, key: str) -> bytes | None:
        return self.client.get(self._key(kind, key)) or None  # b"": no record of this kind

    def get_many(self, kind: str, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for start in range(0, len(keys), self.BATCH):
            out.extend(r or None for r in self.client.mget([self._key(kind, k) for k in keys[start:start + self.BATCH]]))
        return out

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.client.get(self._key("churn", key)) is not None

    def __len__(self) -> int:
        return int(self._meta.get("customers", 0))

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "customers": len(self), "generation": self.generation, "prefix": self.prefix}


class OverlayStore(OnlineStore):
    """The batch records of a state, with the records of customers who have online events on top.

    ``online``: a ``serving.events.OnlineEvents`` (``lookup(kind, keys)`` gives the recomputed records
    of the keys with online events). A customer first seen through events is known from then on.
    """

    def __init__(self, base: OnlineStore, online):
        self.base = base
        self.online = online
        self.backend = base.backend
        self.computes = base.computes

    def get(self, kind: str, key: str) -> bytes | None:
        fresh = self.online.lookup(kind, [key])
        return fresh[key] if key in fresh else self.base.get(kind, key)

    def get_many(self, kind: str, keys: Sequence[str]) -> list[bytes | None]:
        fresh = self.online.lookup(kind, keys)
        if not fresh:
            return self.base.get_many(kind, keys)
        rest = [k for k in keys if k not in fresh]
        batch = dict(zip(rest, self.base.get_many(kind, rest)))
        return [fresh[k] if k in fresh else batch[k] for k in keys]

    def __contains__(self, key: object) -> bool:
        return key in self.base or (isinstance(key, str) and self.online.version(key) > 0)

    def __len__(self) -> int:
        return len(self.base)

    def column(self, name: str) -> np.ndarray | None:
        return self.base.column(name)

    def info(self) -> dict[str, Any]:
        return {**self.base.info(), "online": self.online.info()}


# --------------------------------------------------------------------------------------------
# scored on first need
# --------------------------------------------------------------------------------------------
class LruRecords:
    """Records computed in this worker, bounded: ``id -> {kind: bytes}``, the least recently used go first."""

    backend = "memory"

    def __init__(self, max_entries: int):
        from collections import OrderedDict

        self.max_entries = max_entries
        self._data: "OrderedDict[str, dict[str, bytes]]" = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, kind: str, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        with self._lock:
            for key in keys:
                hit = self._data.get(key)
                if hit is not None:
                    self._data.move_to_end(key)
                out.append(None if hit is None else hit[kind])
        return out

    def put_many(self, records: Mapping[str, Mapping[str, bytes]]) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            for key, recs in records.items():
                self._data[key] = dict(recs)
                self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def info(self) -> dict[str, Any]:
        return {"records": self.backend, "cached": len(self._data), "max_cached": self.max_entries}


class RedisRecordCache:
    """Records computed by any worker on one Redis: ``<prefix>:<generation>:<kind>:<id>`` (the
    :class:`RedisStore` layout), each key expiring ``keep_seconds`` after it was computed; a
    generation is one data fingerprint and champion version, so a reload never reads old scores."""

    backend = "redis"
    BATCH = 1000

    def __init__(self, client: Any, prefix: str, generation: str, keep_seconds: int = 7 * 86400):
        self.client = client
        self.prefix = prefix
        self.generation = generation
        self.keep_seconds = keep_seconds

    def _key(self, kind: str, key: str) -> str:
        return f"{self.prefix}:{self.generation}:{kind}:{key}"

    def get_many(self, kind: str, keys: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for start in range(0, len(keys), self.BATCH):
            out.extend(self.client.mget([self._key(kind, k) for k in keys[start:start + self.BATCH]]))
        return out

    def put_many(self, records: Mapping[str, Mapping[str, bytes]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, recs in records.items():
            for kind, rec in recs.items():
                pipe.set(self._key(kind, key), rec, ex=self.keep_seconds)
        pipe.execute()

    def info(self) -> dict[str, Any]:
        return {"records": self.backend, "generation": self.generation, "prefix": self.prefix}


def score_cache_size() -> int:
    """``CRMML_SCORE_CACHE``: customers whose churn and profile records are kept per worker (default 50,000;
    about 3 KB each with the synthetic shop's profiles, so ~150 MB)."""
    try:
        return max(0, int(os.environ.get("CRMML_SCORE_CACHE", "50000")))
    except ValueError:
        return 50000


class LazyStore(OnlineStore):
    """Churn records and profiles computed when a customer is first asked for, then kept.

    ``table``: the ``serving.table.OnlineTable`` of the state (each customer's scoring and 360 row,
    memory-mapped); ``score(frame)``: the champion's ``training.churn.score_customers`` over some rows,
    with the population's CLV threshold; ``cache``: :class:`LruRecords` or :class:`RedisRecordCache`.
    A request's unknown-to-the-cache ids are scored together in one vectorised call and encoded by
    :func:`build_customer_store`, as the batch encodes them; nothing is scored at start-up.
    """

    def __init__(self, table, score, model_version: str, cache, columns: Sequence[str] | None = None):
        self.table = table
        self.score = score
        self.columns = columns  # the scoring columns ``score`` reads (None: all)
        self.model_version = model_version
        self.cache = cache
        self.backend = cache.backend
        self.computes = True
        self.scored = 0  # customers scored by this worker (the start-up test reads it)
        self.batches = 0
        self._queue: list[tuple[list[str], Any]] = []
        self._running = False
        self._turn = threading.Condition()

    def get(self, kind: str, key: str) -> bytes | None:
        return self.get_many(kind, [key])[0]

    def get_many(self, kind: str, keys: Sequence[str]) -> list[bytes | None]:
        keys = list(keys)
        found = self.cache.get_many(kind, keys)
        missing = [k for k, rec in zip(keys, found) if rec is None]
        if missing:
            computed = self._coalesced(list(dict.fromkeys(missing)))
            found = [rec if rec is not None else computed.get(k, {}).get(kind) for k, rec in zip(keys, found)]
        return [rec or None for rec in found]  # b"": known, but no record of this kind

    def _coalesced(self, keys: list[str]) -> dict[str, dict[str, bytes]]:
        """:meth:`compute` of these keys, together with those of the requests waiting meanwhile.

        One scoring call costs about the same for 1 row as for 50 (vectorised), and requests hold the
        GIL in turn anyway: so while one batch is scored the others queue, and the next request to
        run scores everything queued in one call. At low load a batch is one request, not delayed.
        """
        from concurrent.futures import Future

        mine: Future = Future()
        with self._turn:
            self._queue.append((keys, mine))
        while True:
            with self._turn:
                while self._running and not mine.done():
                    self._turn.wait()
                if mine.done():
                    break
                self._running = True
                batch, self._queue = self._queue, []
            try:
                wanted = list(dict.fromkeys(k for ks, _ in batch for k in ks))
                try:
                    out = self.compute(wanted)
                except BaseException as exc:  # every waiter of this batch gets the error
                    for _, fut in batch:
                        fut.set_exception(exc)
                else:
                    for _, fut in batch:
                        fut.set_result(out)
            finally:
                with self._turn:
                    self._running = False
                    self._turn.notify_all()
        return mine.result()

    def compute(self, keys: Sequence[str]) -> dict[str, dict[str, bytes]]:
        """Score and encode these ids (the known ones), cache and return their records."""
        pos = self.table.positions(keys)
        known = pos[pos >= 0]
        if not len(known):
            return {}
        frame = self.table.scoring_rows(known, self.columns)
        c360 = self.table.c360_rows(known)
        scores = self.score(frame) if len(frame) else pd.DataFrame(columns=["customer_id", *SCORE_FIELDS])
        self.scored += len(frame)
        self.batches += 1
        store = build_customer_store(scores, c360, self.model_version, self.table.meta["as_of"])
        out = {key: {kind: store.get(kind, key) or b"" for kind in KINDS} for key in self.table.id_at(known)}
        self.cache.put_many(out)
        return out

    def __contains__(self, key: object) -> bool:
        return key in self.table

    def __len__(self) -> int:
        return len(self.table)

    def info(self) -> dict[str, Any]:
        return {"backend": self.backend, "customers": len(self), "scored_here": self.scored, "score_batches": self.batches,
                **self.cache.info(), **self.table.info()}


def redis_client(url: str):
    """A ``redis.Redis`` for ``url`` (``redis://127.0.0.1:6379/0``), checked with a PING."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConnectionError(f"redis at {url.split('@')[-1]} not reachable: {exc}") from None
    return client


def join_records(records: Iterable[bytes]) -> bytes:
    """``[r1,r2,...]`` as bytes, from pre-encoded records."""
    return b"[" + b",".join(records) + b"]"


# --------------------------------------------------------------------------------------------
# online data: what the state loads from the workspace (start-up and reloads, never per request)
# --------------------------------------------------------------------------------------------
#: workspace files whose change triggers a reload of the online data
WATCHED = (("data", "events"), ("data", "customers"), ("data", "items"), ("data", "tickets"), ("data", "campaigns"),
           ("data", "interactions"), ("features", "customer360"))


def data_stamp(ws) -> tuple:
    """Cheap fingerprint of the workspace tables the online data is built from (mtime and size)."""
    out = []
    for kind, name in WATCHED:
        path = ws.table_path(name, kind)
        try:
            st = path.stat()
        except OSError:
            continue
        out.append((f"{kind}/{name}", st.st_mtime_ns, st.st_size))
    return tuple(out)


class CustomerData:
    """Customer data at one as-of date (load time only): customer 360, CLV, and the churn scoring
    frames (features at the as-of date for every customer, one per model horizon, made on demand)."""

    def __init__(self, ws, as_of: pd.Timestamp, c360: pd.DataFrame | None, clv: pd.DataFrame | None,
                 sources: dict[str, str], stamp: tuple, fingerprint: str | None = None):
        self.ws = ws
        self.as_of = pd.Timestamp(as_of)
        self.c360 = c360
        self.clv = clv
        self.sources = sources
        self.stamp = stamp
        self.fingerprint = fingerprint
        self._frames: dict[int, pd.DataFrame] = {}

    @property
    def as_of_str(self) -> str:
        return str(self.as_of.date())

    def scoring_frame(self, horizon_days: int) -> pd.DataFrame:
        """Every customer seen before the as-of date with the churn model's features at that date
        (``features.churn_features.feature_matrix``: read from the workspace when ``crmml features``
        stored it, computed and stored otherwise)."""
        if horizon_days not in self._frames:
            from features.churn_features import feature_matrix

            frame = feature_matrix(self.ws, [self.as_of], horizon_days=horizon_days, include_ineligible=True)
            frame["customer_id"] = frame["customer_id"].astype(str)
            self._frames = {horizon_days: frame}  # keep one: the champion's
            self.sources["churn_features"] = "features.churn_features.feature_matrix (stored in the workspace)"
        return self._frames[horizon_days]


    # -- per-customer reads (online events), the same on both kinds of data ----------------------
    def c360_of(self, ids: Sequence[str]) -> pd.DataFrame:
        """The customer 360 rows of these ids (those with one)."""
        c360 = self.c360 if self.c360 is not None else pd.DataFrame({"customer_id": pd.Series([], dtype=str)})
        return c360[c360["customer_id"].isin(list(ids))]

    def clv_of(self, ids: Sequence[str]) -> pd.DataFrame | None:
        clv = self.clv
        return None if clv is None else clv[clv["customer_id"].astype(str).isin(list(ids))]

    def any_customer(self) -> str | None:
        return None if self.c360 is None or not len(self.c360) else str(self.c360["customer_id"].iloc[0])

    def population(self) -> dict[str, np.ndarray]:
        """Recency, frequency and monetary of the buyers (for RFM quintiles of online customers)."""
        pop = {}
        for col in ("recency_days", "frequency", "monetary"):
            if self.c360 is None or col not in self.c360.columns:
                pop[col] = np.array([])
                continue
            buyers = self.c360["frequency"].astype("float64") > 0
            pop[col] = self.c360.loc[buyers, col].astype("float64").to_numpy()
        return pop

    high_value = ...  # the CLV threshold of the actions: that of the scored rows (see TableData)


class TableData(CustomerData):
    """The same data read from a published ``serving.table.OnlineTable``: opening it reads nothing.

    Whole-population frames (``c360``, ``clv``, ``scoring_frame``) are made from the table only if
    something asks for them (the next-best-action route); requests read single rows.
    """

    def __init__(self, ws, table, stamp: tuple):
        meta = table.meta
        super().__init__(ws, pd.Timestamp(meta["as_of"]), None, None,
                         {**meta.get("sources", {}), "online_table": str(table.directory)}, stamp, meta.get("fingerprint"))
        self.table = table
        self.high_value = meta.get("high_value")
        self._c360_frame: pd.DataFrame | None = None

    @property
    def c360(self) -> pd.DataFrame:
        if self._c360_frame is None:
            self._c360_frame = self.table.c360.to_pandas()
        return self._c360_frame

    @c360.setter
    def c360(self, value) -> None:
        self._c360_frame = value

    @property
    def clv(self) -> pd.DataFrame:
        return self.scoring_frame(int(self.table.meta["horizon_days"]))

    @clv.setter
    def clv(self, value) -> None:
        pass  # merged into the scoring rows of the table

    def scoring_frame(self, horizon_days: int) -> pd.DataFrame:
        if horizon_days != int(self.table.meta["horizon_days"]):
            raise ValueError(f"online table built for a {self.table.meta['horizon_days']}-day horizon, not {horizon_days}")
        if horizon_days not in self._frames:
            self._frames = {horizon_days: self.table.scoring.to_pandas()}
        return self._frames[horizon_days]

    def c360_of(self, ids: Sequence[str]) -> pd.DataFrame:
        pos = self.table.positions(list(ids))
        return self.table.c360_rows(pos[pos >= 0])

    def clv_of(self, ids: Sequence[str]) -> pd.DataFrame:
        pos = self.table.positions(list(ids))
        return self.table.scoring_rows(pos[pos >= 0])

    def any_customer(self) -> str | None:
        ids = self.table.warm_ids(1)
        return ids[0] if ids else None

    def population(self) -> dict[str, np.ndarray]:
        return self.table.population()


def _rows_at(df: pd.DataFrame, column: str, as_of: pd.Timestamp) -> pd.DataFrame | None:
    if column not in df.columns:
        return None
    values = pd.to_datetime(df[column], errors="coerce")
    rows = df.loc[values.dt.normalize() == as_of]
    return rows.reset_index(drop=True) if len(rows) else None


def load_customer_data(ws) -> CustomerData:
    """Customer 360 and CLV of every customer at the as-of date (the day after the last event).

    Prefers what the pipeline wrote to the workspace (``features/customer360`` of that date);
    computes what is missing with ``features.insight.build_customer360`` and ``training.clv.clv_frame``.
    """
    stamp = data_stamp(ws)
    as_of = as_of_date(ws)
    sources: dict[str, str] = {}
    c360 = None
    if ws.has_table("customer360", "features"):
        c360 = _rows_at(ws.read_table("customer360", "features"), "as_of", as_of)
        if c360 is not None:
            sources["customer360"] = str(ws.table_path("customer360", "features"))
    if c360 is None:
        from features.insight import build_customer360

        c360 = build_customer360(ws, as_of)
        sources["customer360"] = "computed at load (features.insight.build_customer360)"
    c360 = c360.copy()
    c360["customer_id"] = c360["customer_id"].astype(str)
    clv = None
    try:
        from training.clv import clv_frame

        events = ws.read_table("events", columns=["customer_id", "event_type", "timestamp", "amount"])
        clv = clv_frame(events, as_of)
        sources["clv"] = "computed at load (training.clv.clv_frame)"
    except Exception as exc:  # CLV needs repeat buyers; without it the value at stake is unknown
        sources["clv"] = f"unavailable ({type(exc).__name__}: {exc})"
    return CustomerData(ws, as_of, c360, clv, sources, stamp, ws.data_fingerprint())


# --------------------------------------------------------------------------------------------
# records
# --------------------------------------------------------------------------------------------
RFM_FIELDS = ("recency_days", "frequency", "monetary", "r_score", "f_score", "m_score", "rfm_score")
SCORE_FIELDS = ("churn_probability", "risk_tier", "reasons", "value_at_stake", "clv_12m", "suggested_action", "action_text")
RISK_TIERS = ("high", "medium", "low")


def _col(df: pd.DataFrame | None, name: str, n: int) -> list:
    if df is None or name not in df.columns:
        return [None] * n
    return column_values(df[name])


def _reasons(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return [{"feature": "", "value": None, "contribution": None, "sentence": value}]
    return [
        {
            "feature": str(r.get("feature", "")),
            "value": plain(r.get("value")),
            "contribution": plain(r.get("contribution")),
            "sentence": str(r.get("sentence", "")),
        }
        for r in (plain(value) or [])
        if isinstance(r, dict)
    ]


def _tags(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return [str(t) for t in value]


def build_customer_store(scores: pd.DataFrame, c360: pd.DataFrame | None, model_version: str, as_of: str) -> MemoryStore:
    """Encode every customer's churn record and 360 profile once; returns the in-memory store.

    ``scores``: ``customer_id`` + ``SCORE_FIELDS`` (``training.churn_pyfunc.score_customers``);
    ``c360``: ``features.insight`` customer 360 rows. A customer in only one of them gets the record
    of that one (no churn record without a score; a profile without 360 row carries its churn risk).
    """
    scores = scores.reset_index(drop=True)
    score_ids = scores["customer_id"].astype(str).tolist()
    c360 = c360.reset_index(drop=True) if c360 is not None else None
    c360_ids = c360["customer_id"].astype(str).tolist() if c360 is not None else []
    ids = list(dict.fromkeys(c360_ids + score_ids))
    n = len(ids)

    # churn side, aligned to `ids`
    s_pos = {cid: i for i, cid in enumerate(score_ids)}
    s = {name: _col(scores, name, len(scores)) for name in SCORE_FIELDS}
    c_pos = {cid: i for i, cid in enumerate(c360_ids)}
    seg = _col(c360, "rfm_segment", len(c360_ids)) if c360 is not None and "rfm_segment" in c360.columns else _col(c360, "segment", len(c360_ids))
    tier = _col(c360, "value_tier", len(c360_ids))
    churn_records: list[bytes] = []
    churn_objs: list[dict | None] = []
    probability = np.full(n, np.nan, dtype=np.float32)
    tier_code = np.full(n, -1, dtype=np.int8)
    tier_index = {t: i for i, t in enumerate(RISK_TIERS)}
    for row, cid in enumerate(ids):
        i = s_pos.get(cid)
        j = c_pos.get(cid)
        if i is None:
            churn_records.append(b"")
            churn_objs.append(None)
            continue
        p = s["churn_probability"][i]
        rec = {
            "customer_id": cid,
            "churn_probability": p,
            "risk_tier": s["risk_tier"][i],
            "reasons": _reasons(s["reasons"][i]),
            "value_at_stake": s["value_at_stake"][i],
            "clv_12m": s["clv_12m"][i],
            "suggested_action": s["suggested_action"][i],
            "action_text": s["action_text"][i],
            "segment": seg[j] if j is not None else None,
            "value_tier": tier[j] if j is not None else None,
            "model_version": model_version,
            "as_of": as_of,
        }
        if p is not None:
            probability[row] = p
        tier_code[row] = tier_index.get(rec["risk_tier"], -1)
        churn_objs.append(rec)
        churn_records.append(dumps(rec))

    # profile side
    profile_records: list[bytes] = []
    known = {"customer_id", "as_of", "rfm_segment", "segment", "value_tier", "lifecycle_stage", "tags", *RFM_FIELDS}
    extra_cols = [c for c in (c360.columns if c360 is not None else []) if c not in known]
    cols = {name: _col(c360, name, len(c360_ids)) for name in (*RFM_FIELDS, "value_tier", "lifecycle_stage", "tags", *extra_cols)}
    for row, cid in enumerate(ids):
        j = c_pos.get(cid)
        churn = churn_objs[row]
        churn_part = None
        if churn is not None:
            churn_part = {k: churn[k] for k in ("churn_probability", "risk_tier", "reasons", "value_at_stake",
                                                "suggested_action", "action_text", "model_version")}
        if j is None:
            rec = {
                "customer_id": cid, "as_of": as_of, "rfm": {}, "segment": None, "value_tier": None,
                "lifecycle_stage": None, "tags": [], "clv_12m": churn["clv_12m"] if churn else None,
                "churn": churn_part, "attributes": {},
            }
        else:
            rec = {
                "customer_id": cid,
                "as_of": as_of,
                "rfm": {k: cols[k][j] for k in RFM_FIELDS},
                "segment": seg[j],
                "value_tier": cols["value_tier"][j],
                "lifecycle_stage": cols["lifecycle_stage"][j],
                "tags": _tags(cols["tags"][j]),
                "clv_12m": churn["clv_12m"] if churn else None,
                "churn": churn_part,
                "attributes": {k: cols[k][j] for k in extra_cols},
            }
        profile_records.append(dumps(rec))
    return MemoryStore(
        ids,
        {"churn": churn_records, "profile": profile_records},
        columns={"churn_probability": probability, "risk_tier": tier_code},
    )


def risk_tier_counts(store: OnlineStore) -> dict[str, int]:
    codes = store.column("risk_tier")
    if codes is None:
        return {}
    counts = np.bincount(codes[codes >= 0].astype(np.int64), minlength=len(RISK_TIERS))
    return {t: int(c) for t, c in zip(RISK_TIERS, counts) if c}
