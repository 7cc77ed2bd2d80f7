"""Online events: what ``POST /events`` accepted since the served batch data, applied to the answers.

:class:`OnlineEvents` belongs to one :class:`~serving.state.ServingState`. It owns the worker's read
position in the event log (``features.event_log``): events before the offset the batch data was
ingested at are in the batch already; events after it are kept here per customer. Every worker reads
the log's new lines before it answers (:meth:`OnlineEvents.refresh`, one ``stat`` when nothing is new),
so all workers on a host see the same events, whichever of them accepted them.

For a customer with online events the answers are recomputed, not patched:

* churn score and profile: :func:`features.churn_features.customer_rows` computes the customer's row
  of the churn feature matrix from their batch rows plus the new events, with the batch cutoff's
  shop-wide statistics (BG/NBD population parameters, item seasonality), at the day after their
  newest event (never before the batch as-of date); the champion scores it
  (``training.churn.score_customers``) and ``serving.store.build_customer_store`` encodes the records.
  RFM scores are placed in the batch population (``features.insight.quintile_in``).
  Computed on first need and kept per (customer, number of online events) in the record cache
  (:class:`MemoryRecords`, or :class:`RedisRecords` shared by every worker and host on one Redis);
* recommendations: the customer's new purchases are folded into their history
  (``Recommender.recommend_folded``: ALS user vector recomputed, buy-again and co-occurrence from the
  new history, ``exclude_seen`` drops them), never cached.

Nothing here logs ids or event content.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import pandas as pd

from features.event_log import EVENT_FIELDS, EventLog, Tail, ingested_offset, validate_events

log = logging.getLogger("crmml.serving")

#: the canonical tables holding per-customer rows the churn features read
CUSTOMER_TABLES = ("events", "customers", "tickets", "campaigns")


# --------------------------------------------------------------------------------------------
# where computed records are kept
# --------------------------------------------------------------------------------------------
class MemoryRecords:
    """Records computed by this worker: ``customer_id -> (version, {kind: bytes})``."""

    backend = "memory"

    def __init__(self):
        self._data: dict[str, tuple[int, dict[str, bytes]]] = {}

    def get(self, customer_id: str, version: int) -> dict[str, bytes] | None:
        hit = self._data.get(customer_id)
        return hit[1] if hit is not None and hit[0] == version else None

    def put(self, customer_id: str, version: int, records: dict[str, bytes]) -> None:
        self._data[customer_id] = (version, records)


class RedisRecords:
    """Records shared by every worker on one Redis: a hash per customer under the state's generation
    (``<prefix>:<generation>:online:<id>`` with ``version`` and one field per kind), so a worker
    uses what another computed for the same events and a reload never reads the old data's records."""

    backend = "redis"

    def __init__(self, client: Any, prefix: str, generation: str, keep_seconds: int = 7 * 86400):
        self.client = client
        self.base = f"{prefix}:{generation}:online:"
        self.keep_seconds = keep_seconds

    def get(self, customer_id: str, version: int) -> dict[str, bytes] | None:
        hit = self.client.hgetall(self.base + customer_id)
        if not hit or int(hit.get(b"version", -1)) != version:
            return None
        return {k.decode(): v for k, v in hit.items() if k != b"version"}

    def put(self, customer_id: str, version: int, records: dict[str, bytes]) -> None:
        key = self.base + customer_id
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(key, mapping={"version": version, **records})
        pipe.expire(key, self.keep_seconds)
        pipe.execute()


# --------------------------------------------------------------------------------------------
# the online events of one served state
# --------------------------------------------------------------------------------------------
class OnlineEvents:
    """Events accepted after the batch data of one state, per customer, and their recomputed answers."""

    def __init__(self, ws, data, churn, version: str, records=None):
        self.ws = ws
        self.data = data  # serving.store.CustomerData of the state
        self.churn = churn  # LoadedModel of the churn champion
        self.model_version = version
        self.records = records if records is not None else MemoryRecords()
        self.log = EventLog(ws)
        self.start = ingested_offset(ws)
        self.tail = Tail(offset=0)
        self.events: dict[str, list[dict]] = defaultdict(list)
        self._lock = threading.RLock()
        self._compute_lock = threading.Lock()
        self._stats: dict[str, Any] = {}  # shop-wide statistics, loaded on first need
        self.accepted = 0
        self.duplicates = 0
        self.warm_seconds: float | None = None  # set when warm() finished
        self._pending: set[str] = set()
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        # ids of the whole log (idempotency); events after the ingested offset are online
        with self._lock:
            before, self.tail.offset, bad = self.log.read_from(0, self.start)
            self.tail.seen.update(e["event_id"] for e in before)
            self.tail.bad_lines += bad
            self.refresh()

    # -- the log ---------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Take the events other workers appended since the last look (one ``stat`` if none)."""
        if self.log.size() <= self.tail.offset:
            return
        with self._lock:
            new, self.tail.offset, bad = self.log.read_from(self.tail.offset)
            self.tail.bad_lines += bad
            self._apply(new)

    def _apply(self, events: list[dict]) -> None:
        for e in events:
            self.tail.seen.add(e["event_id"])
            self.events[str(e["customer_id"])].append(e)

    def accept(self, raw: list[dict], now: pd.Timestamp | None = None) -> dict:
        """Validate, de-duplicate on ``event_id`` and append durably; returns the /events answer's counts."""
        accepted, rejected = validate_events(raw, now)
        rows = accepted.to_dict("records")
        with self._lock:
            appended, duplicates, others = self.log.append(rows, self.tail)
            self._apply(others)
            self._apply(appended)
        if appended:  # compute the answers now, in the background: the next read finds them (or waits)
            self._schedule(str(e["customer_id"]) for e in appended)
        self.accepted += len(appended)
        self.duplicates += len(duplicates)
        reasons: dict[str, int] = {}
        for r in rejected:
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        return {
            "accepted": len(appended),
            "duplicates": len(duplicates),
            "rejected": len(rejected),
            "rejected_by_reason": reasons,
            "rejected_events": rejected[:100],
        }

    # -- reads -----------------------------------------------------------------------------------
    def version(self, customer_id: str) -> int:
        return len(self.events.get(customer_id, ()))

    def purchased_items(self, customer_id: str) -> list[str]:
        """Items the customer bought online (newest last), for the recommendation fold-in."""
        self.refresh()
        return [str(e["item_id"]) for e in self.events.get(customer_id, ())
                if e.get("event_type") == "purchase" and e.get("item_id")]

    def lookup(self, kind: str, keys: Sequence[str]) -> dict[str, bytes | None]:
        """Records of ``kind`` for the keys with online events (recomputed where stale); others absent."""
        self.refresh()
        wanted = [k for k in dict.fromkeys(keys) if k in self.events]
        if not wanted:
            return {}
        found: dict[str, dict[str, bytes]] = {}
        stale = []
        for cid in wanted:
            hit = self.records.get(cid, self.version(cid))
            if hit is None:
                stale.append(cid)
            else:
                found[cid] = hit
        if stale:
            found.update(self.compute(stale))
        return {cid: (found[cid].get(kind) or None) for cid in wanted if cid in found}

    # -- recomputation ---------------------------------------------------------------------------
    def _shop(self) -> dict:
        """Shop-wide statistics of the batch cutoff (BG/NBD parameters, items table), once per state."""
        if not self._stats:
            from features.churn_features import stored_bgnbd_model
            from features.snapshots import SnapshotQuery

            horizon = int(self.churn.impl.horizon_days)
            facts, tables = SnapshotQuery.facts_of(self.ws)
            self._stats = {
                "horizon": horizon,
                "bg": stored_bgnbd_model(self.ws, self.data.as_of, horizon),
                "items": self.ws.read_table("items") if self.ws.has_table("items") else None,
                "season": {},
                "snapshots": SnapshotQuery(facts, tables, horizon),
            }
        return self._stats

    def _season(self, cutoff: pd.Timestamp):
        """The shop's item seasonality at ``cutoff`` (from the batch purchase lines of the year before)."""
        from features.churn_features import item_seasonality, purchase_lines

        shop = self._shop()
        if cutoff not in shop["season"]:
            if "lines" not in shop:  # cutoffs are never before the as-of date: the last year of lines is enough
                since = self.data.as_of - pd.Timedelta(days=366)
                events = pd.read_parquet(self.ws.table_path("events"), filters=[("timestamp", ">=", since)],
                                         columns=["customer_id", "item_id", "event_type", "timestamp", "amount"])
                shop["lines"] = purchase_lines(events)
            shop["season"][cutoff] = item_seasonality(shop["lines"], cutoff, shop["horizon"])
        return shop["season"][cutoff]

    def warm(self) -> None:
        """Load the shop-wide statistics and compile the feature queries once (background, after a load),
        so the first event's customer is answered as fast as the next ones."""
        started = time.perf_counter()
        try:
            validate_events([{"event_id": "warm", "customer_id": "warm", "event_type": "view",
                              "timestamp": str(self.data.as_of - pd.Timedelta(days=1))}])
            cutoffs = {self.data.as_of, pd.Timestamp.now().normalize() + pd.Timedelta(days=1)}
            for cutoff in cutoffs:
                self._season(cutoff)
            first = self.data.any_customer()
            if first is not None:
                with self._compute_lock:  # the compiled queries are not shared between threads
                    for cutoff in cutoffs:  # the whole path once: query, score with reasons, records
                        rows = self._rows_at(cutoff, [first], {})
                        self._encode(rows, self._score(rows))
        except Exception as exc:  # warming is an optimisation: the first request computes instead
            log.warning("online events: warm-up failed: %s", type(exc).__name__)
        self.warm_seconds = round(time.perf_counter() - started, 2)
        log.info("online events: warm in %.1f s", self.warm_seconds)

    #: customers recomputed together by the background thread (one query, one scoring call)
    CHUNK = 500

    def _schedule(self, cids) -> None:
        """Queue customers for the background recomputation; one thread per state takes whatever is
        queued at once, so a burst of events costs one batch, not one computation per request."""
        with self._lock:
            self._pending.update(cids)
            if self._worker is None:
                self._worker = threading.Thread(target=self._precompute, name="crmml-online", daemon=True)
                self._worker.start()
        self._wake.set()

    def _precompute(self) -> None:
        while True:
            woken = self._wake.wait(timeout=60.0)
            with self._lock:
                if not woken and not self._pending:  # idle: the thread ends (a replaced state's too)
                    self._worker = None
                    return
                self._wake.clear()
                todo, self._pending = list(self._pending), set()
            for start in range(0, len(todo), self.CHUNK):
                try:
                    self.compute(todo[start:start + self.CHUNK])
                except Exception as exc:  # the next read computes again and answers the error
                    log.warning("online events: recomputation failed: %s", type(exc).__name__)

    def _tables(self, cids: list[str], online: dict[str, list[dict]]) -> dict[str, pd.DataFrame]:
        """These customers' batch rows of the customer tables, with their online events added."""
        from features.contract import conform

        out: dict[str, pd.DataFrame] = {}
        for name in CUSTOMER_TABLES:
            if self.ws.has_table(name):
                out[name] = pd.read_parquet(self.ws.table_path(name), filters=[("customer_id", "in", cids)])
        new = [e for cid in cids for e in online.get(cid, ())]
        frame = pd.DataFrame.from_records(new, columns=list(EVENT_FIELDS))
        frame["timestamp"] = pd.to_datetime(frame["timestamp"])
        logged = conform("events", frame, "events log")
        out["events"] = pd.concat([out["events"], logged], ignore_index=True) if "events" in out else logged
        if "customers" in out:
            missing = sorted(set(cids) - set(out["customers"]["customer_id"].astype(str)))
            if missing:
                first = logged[logged["customer_id"].isin(missing)].groupby("customer_id")["timestamp"].min()
                extra = conform("customers", first.reset_index(name="first_seen"), "events log")
                out["customers"] = pd.concat([out["customers"], extra], ignore_index=True)
        items = self._shop()["items"]
        if items is not None:
            out["items"] = items
        return out

    def cutoff_of(self, events: list[dict]) -> pd.Timestamp:
        """The day after the customer's newest event, never before the batch as-of date."""
        if not events:
            return self.data.as_of
        newest = max(pd.Timestamp(e["timestamp"]) for e in events)
        return max(self.data.as_of, newest.normalize() + pd.Timedelta(days=1))

    def feature_rows(self, cids: list[str]) -> pd.DataFrame:
        """The churn feature matrix rows of these customers, their online events included."""
        with self._lock:
            online = {cid: list(self.events.get(cid, ())) for cid in cids}
        by_cutoff: dict[pd.Timestamp, list[str]] = defaultdict(list)
        for cid in cids:
            by_cutoff[self.cutoff_of(online[cid])].append(cid)
        frames = [self._rows_at(cutoff, group, online) for cutoff, group in by_cutoff.items()]
        return pd.concat(frames, ignore_index=True)

    def _rows_at(self, cutoff: pd.Timestamp, cids: list[str], online: dict[str, list[dict]]) -> pd.DataFrame:
        from features.churn_features import customer_rows

        shop = self._shop()
        rows = customer_rows(self._tables(cids, online), cutoff, shop["bg"], self._season(cutoff), shop["horizon"],
                             snapshots=shop["snapshots"])
        return rows[rows["customer_id"].isin(cids)]

    def _score(self, rows: pd.DataFrame) -> pd.DataFrame:
        """``training.churn.score_customers`` of these rows, with the batch population's CLV threshold."""
        from training.churn import score_customers

        ids = rows["customer_id"].astype(str).unique().tolist()
        return score_customers(self.churn.impl, rows, self.data.clv_of(ids), high_value=self.data.high_value)

    def compute(self, cids: list[str]) -> dict[str, dict[str, bytes]]:
        """Churn record and profile of these customers from their batch and online events; cached."""
        with self._compute_lock:  # one recomputation at a time: concurrent readers of a burst share it
            versions = {cid: self.version(cid) for cid in cids}
            out = {}
            todo = []
            for cid in cids:
                hit = self.records.get(cid, versions[cid])
                if hit is not None:
                    out[cid] = hit
                else:
                    todo.append(cid)
            if not todo:
                return out
            rows = self.feature_rows(todo)
            encoded = self._encode(rows, self._score(rows))
            for cid, recs in encoded.items():
                self.records.put(cid, versions[cid], recs)
            return out | encoded

    def _encode(self, rows: pd.DataFrame, scores: pd.DataFrame) -> dict[str, dict[str, bytes]]:
        """The churn record and profile of each row's customer, as of the row's cutoff."""
        from serving.store import build_customer_store

        out = {}
        for cutoff, group in rows.groupby("cutoff", sort=False):
            ids = group["customer_id"].astype(str).tolist()
            store = build_customer_store(
                scores[scores["customer_id"].isin(ids)], self.profiles(group),
                self.model_version, str(pd.Timestamp(cutoff).date()),  # the customer's as-of date
            )
            for cid in ids:
                out[cid] = {"churn": store.get("churn", cid) or b"", "profile": store.get("profile", cid) or b""}
        return out

    def profiles(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Customer 360 rows of these customers: the batch row with the RFM and activity features of
        ``rows`` (the churn features: the same definitions) and RFM scores placed in the batch population."""
        from features.insight import CUSTOMER360_FEATURES, quintile_in, rfm_segment

        base = self.data.c360_of(rows["customer_id"].astype(str).unique().tolist()).set_index("customer_id")
        pop = self._population()
        out = []
        for row in rows.to_dict("records"):
            cid = str(row["customer_id"])
            rec = dict(base.loc[cid]) if cid in base.index else {}
            rec["customer_id"] = cid
            for name in CUSTOMER360_FEATURES:
                if name in row:
                    rec[name] = row[name]
            buyer = (row.get("frequency") or 0) > 0
            r = quintile_in(row.get("recency_days"), pop["recency_days"], higher_is_better=False) if buyer else np.nan
            f = quintile_in(row.get("frequency"), pop["frequency"]) if buyer else np.nan
            m = quintile_in(row.get("monetary"), pop["monetary"]) if buyer else np.nan
            rec.update(r_score=r, f_score=f, m_score=m,
                       rfm_score=f"{int(r)}{int(f)}{int(m)}" if buyer and not np.isnan(r + f + m) else None,
                       rfm_segment=rfm_segment(r, f) if buyer else None)
            out.append(rec)
        frame = pd.DataFrame(out)
        for col in ("r_score", "f_score", "m_score"):
            frame[col] = frame[col].astype("Float64").astype("Int64")
        return frame

    def _population(self) -> dict[str, np.ndarray]:
        shop = self._shop()
        if "population" not in shop:
            shop["population"] = self.data.population()
        return shop["population"]

    def info(self) -> dict:
        return {"log": str(self.log.path), "ingested_offset": self.start, "read_offset": self.tail.offset,
                "online_customers": len(self.events), "online_events": sum(map(len, self.events.values())),
                "accepted_here": self.accepted, "duplicates_here": self.duplicates,
                "unreadable_lines": self.tail.bad_lines, "records": self.records.backend, "pid": os.getpid(),
                "warm_seconds": self.warm_seconds}
