"""The recommendation side of serving: per-request calls into the champion recommender, cached.

:class:`RecommenderAdapter` answers the recommendation routes from a fitted
``training.recommender.Recommender``; :class:`RecommendationCache` keeps the top-``MAX_K`` answers
of known customers and items in compact arrays, so that a page view of a known customer is a lookup.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from serving.store import plain

log = logging.getLogger("crmml.serving")

def _records(result) -> list[dict]:
    """A recommender answer (list of dicts or DataFrame) as a list of plain dicts."""
    if result is None:
        return []
    if hasattr(result, "to_dict"):
        return result.to_dict("records")
    return list(result)


def _plain_item(it: dict) -> dict:
    out = {"item_id": str(it["item_id"]), "score": plain(it.get("score")), "source": str(it.get("source", "model"))}
    for extra in ("support", "confidence", "lift"):
        if extra in it:
            out[extra] = plain(it[extra])
    if out["score"] is None and "confidence" in it:
        out["score"] = out.get("confidence")
    return out


class RecommendationCache:
    """A bounded cache of top-``MAX_K`` answers in compact arrays (item column, score, source code).

    Answers of one state never change (the model is frozen), so a customer's list is computed once
    with ``k = MAX_K`` and later requests take a prefix (``recommend_one`` ranks with a stable sort
    and appends fallbacks after, so the top ``k`` is the prefix of the top ``MAX_K``). About 1 KB
    per entry; the oldest entries go first when full. Belongs to one state: a reload starts empty.
    """

    def __init__(self, item_ids, max_entries: int):
        self._ids = item_ids  # numpy object array: column -> item id
        self._index = {str(x): i for i, x in enumerate(item_ids)}
        self._sources: list[str] = []
        self._codes: dict[str, int] = {}
        self._data: "OrderedDict[Any, tuple]" = OrderedDict()
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, key, k: int) -> list[dict] | None:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
        cols, scores, codes, extras = entry
        n = min(k, len(cols))
        ids, src = self._ids, self._sources
        out = [
            {"item_id": str(ids[c]), "score": float(sc), "source": src[code]}
            for c, sc, code in zip(cols[:n].tolist(), scores[:n].tolist(), codes[:n].tolist())
        ]
        if extras is not None:
            for item, row in zip(out, extras[:n].tolist()):
                item["support"], item["confidence"], item["lift"] = row
        return out

    def put(self, key, items: list[dict]) -> None:
        import numpy as np

        if self.max_entries <= 0:
            return
        try:
            cols = np.fromiter((self._index[it["item_id"]] for it in items), dtype=np.int32, count=len(items))
        except KeyError:  # an item outside the model's catalogue: do not cache
            return
        codes = np.empty(len(items), dtype=np.uint8)
        with self._lock:
            for n, it in enumerate(items):
                code = self._codes.get(it["source"])
                if code is None:
                    if len(self._sources) >= 255:
                        return
                    code = self._codes[it["source"]] = len(self._sources)
                    self._sources.append(it["source"])
                codes[n] = code
        scores = np.array([np.nan if it.get("score") is None else it["score"] for it in items], dtype=np.float32)
        extras = None
        if items and "confidence" in items[0]:
            extras = np.array([[it.get("support"), it.get("confidence"), it.get("lift")] for it in items], dtype=np.float32)
        with self._lock:
            self._data[key] = (cols, scores, codes, extras)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def full(self) -> bool:
        """True when one more entry would push out the oldest (warming stops there)."""
        return len(self._data) >= self.max_entries

    def info(self) -> dict:
        return {"entries": len(self._data), "max_entries": self.max_entries, "hits": self.hits, "misses": self.misses}


def _cache_size() -> int:
    try:
        return max(0, int(os.environ.get("CRMML_REC_CACHE", "50000")))
    except ValueError:
        return 50000


class RecommenderAdapter:
    """Per-request calls into the champion ``training.recommender.Recommender``.

    Known customers go through ``recommend_one`` (the fast per-user path); unknown ones get its
    cold-start fallback and the answer is flagged ``cold_start``. Unknown items (not in the model's
    catalogue) give None, which the service answers with 404. Unfiltered answers of known customers
    and items are cached per state (``CRMML_REC_CACHE`` entries, default 50,000; 0 turns it off).
    """

    MAX_K = 100

    def __init__(self, rec, cache_size: int | None = None):
        self.rec = rec
        self._users = rec.user_index_
        self._items = rec.item_index_
        size = _cache_size() if cache_size is None else cache_size
        self.cache = RecommendationCache(rec.item_ids_, size)
        self.warm_done = False
        self.warm_total = 0
        self.warm_seconds: float | None = None

    def cache_info(self) -> dict:
        return {**self.cache.info(), "warm_done": self.warm_done, "warmed": self.warm_total,
                "warm_seconds": self.warm_seconds}

    @property
    def n_items(self) -> int:
        return len(self._items)

    @property
    def n_users(self) -> int:
        return len(self._users)

    def knows_item(self, item_id: str) -> bool:
        return item_id in self._items

    def _cached(self, key, k: int, compute: Callable[[int], Any]) -> list[dict]:
        hit = self.cache.get(key, k)
        if hit is not None:
            return hit
        items = [_plain_item(it) for it in _records(compute(self.MAX_K))]
        self.cache.put(key, items)
        return items[:k]

    def for_customer(self, customer_id: str, k: int, exclude_seen: bool, filters: dict | None,
                     bought: list[str] | None = None) -> tuple[list[dict], bool]:
        """``bought``: items bought since the model's data (online events): folded into the history, not cached."""
        if bought:
            items = self.rec.recommend_folded(customer_id, bought, k=k, exclude_seen=exclude_seen, filters=filters or None)
            return [_plain_item(it) for it in _records(items)], False
        cold = customer_id not in self._users
        if cold or filters:
            items = self.rec.recommend_one(customer_id, k=k, exclude_seen=exclude_seen, filters=filters or None)
            return [_plain_item(it) for it in _records(items)], cold
        compute = lambda kk: self.rec.recommend_one(customer_id, k=kk, exclude_seen=exclude_seen)  # noqa: E731
        return self._cached(("u", customer_id, bool(exclude_seen)), k, compute), False

    def for_basket(self, item_ids: list[str], k: int, filters: dict | None) -> tuple[list[dict], bool, list[str]]:
        unknown = [i for i in dict.fromkeys(item_ids) if i not in self._items]
        known = [i for i in item_ids if i in self._items]
        items = self.rec.recommend_for_items(known or item_ids, k=k, filters=filters or None)
        return [_plain_item(it) for it in _records(items)], not known, unknown

    def similar(self, item_id: str, k: int) -> list[dict] | None:
        if item_id not in self._items:
            return None
        return self._cached(("s", item_id), k, lambda kk: self.rec.similar_items(item_id, k=kk))

    def bought_together(self, item_id: str, k: int) -> list[dict] | None:
        if item_id not in self._items:
            return None
        return self._cached(("b", item_id), k, lambda kk: self.rec.bought_together(item_id, k=kk))

    def warm(self, customer_ids, stop: threading.Event) -> None:
        """Fill the cache for these customers (most likely visitors first) until full or ``stop``.

        Runs in a background thread after a state goes live, so that page views of known customers
        are lookups from the start; requests keep being answered meanwhile (a miss computes itself).
        """
        started = time.perf_counter()
        self.warm_total = 0
        for cid in customer_ids:
            if stop.is_set() or self.cache.full:
                break
            if cid not in self._users:
                continue
            try:
                self.for_customer(cid, self.MAX_K, True, None)
            except Exception as exc:  # one customer failing must not stop the rest
                log.warning("warm-up: a recommendation failed: %s", type(exc).__name__)
            self.warm_total += 1
            time.sleep(0)  # let request threads and the event loop in
        self.warm_seconds = round(time.perf_counter() - started, 1)

    def smoke(self) -> None:
        """Call every route's code path once (known and unknown customer, an item, a basket).

        A model that cannot answer (e.g. pickled by a different version of the code) fails here, at
        load, instead of answering 500 later: start-up refuses, a reload keeps the old state.
        """
        user = next(iter(self._users), None)
        item = next(iter(self._items), None)
        if user is not None:
            self.rec.recommend_one(user, k=3, exclude_seen=True)
        self.rec.recommend_one("__crmml_smoke_unknown__", k=3)
        if item is not None:
            self.rec.recommend_for_items([item], k=3)
            self.rec.similar_items(item, k=3)
            self.rec.bought_together(item, k=3)
