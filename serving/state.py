"""The served state: everything one request needs, built whole at start-up and on each reload.

:func:`build_state` loads the champions (reusing the unchanged ones of the previous state), maps the
online table of the data (``serving.table``; reused when its stamp did not change) under a store that
scores a customer when first asked (``serving.store.LazyStore``): start-up time and memory do not grow
with the number of customers. It wraps the recommender in a :class:`~serving.rec_cache.RecommenderAdapter`. A
:class:`ServingState` is never changed after it is built: requests keep the object they read.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from features.workspace import Workspace
from serving import store as st
from serving.champions import ChampionRef, LoadedModel, ModelLoadError, describe, load_champion, now, resolve_champions
from serving.events import MemoryRecords, OnlineEvents, RedisRecords
from serving.nba import NextBestActions
from serving.rec_cache import RecommenderAdapter
from training.names import CHURN, RECOMMENDER

log = logging.getLogger("crmml.serving")


def scores_at_startup() -> bool:
    """``CRMML_SCORES=startup``: the snapshot design (every customer scored and encoded when a state
    loads, as before the online table), kept to compare against (``bench/bench_service_scale.py``);
    the default scores on first need."""
    return os.environ.get("CRMML_SCORES", "lazy") == "startup"


def load_data(ws: Workspace, horizon_days: int, stamp: tuple) -> st.TableData:
    """The online data of the workspace: its published online table (``serving.table``), mapped
    without reading it; built first (from ``store.load_customer_data``) if this data has none."""
    from serving.table import open_or_publish

    table = open_or_publish(ws, horizon_days, stamp, lambda: st.load_customer_data(ws))
    return st.TableData(ws, table, stamp)


def _redis() -> tuple[Any, str]:
    client = st.redis_client(os.environ.get("CRMML_REDIS_URL", "redis://127.0.0.1:6379/0"))
    return client, os.environ.get("CRMML_REDIS_PREFIX", "crmml")


def batch_store(churn: LoadedModel, data: st.TableData, version: str) -> tuple[st.OnlineStore, Any]:
    """The batch records of the customers and where online records go, for ``CRMML_STORE``.

    Records are computed on first need (``store.LazyStore`` over the online table of ``data``) by the
    champion (``training.churn.score_customers``, the batch's code path, with the population's CLV
    threshold) and kept: ``memory`` (default) in a bounded LRU of this worker (``CRMML_SCORE_CACHE``);
    ``redis`` (``CRMML_REDIS_URL``) in Redis, one generation per data fingerprint and champion version,
    shared by every worker; online records shared there too (``serving.events.RedisRecords``).
    With ``CRMML_SCORES=startup`` every customer is scored and encoded here instead (the snapshot design).
    """
    from training.churn import score_customers

    model, threshold = churn.impl, data.high_value

    def score(frame):
        return score_customers(model, frame, None, high_value=threshold)

    redis = os.environ.get("CRMML_STORE", "memory") == "redis"
    generation = f"{(data.fingerprint or 'nofp')[:16]}-v{version}"
    if scores_at_startup():
        def build():
            frame = data.scoring_frame(int(model.horizon_days))
            return st.build_customer_store(score(frame), data.c360, version, data.as_of_str)

        if not redis:
            return build(), MemoryRecords()
        client, prefix = _redis()
        return st.RedisStore.publish_once(client, generation, build, prefix), RedisRecords(client, prefix, generation)
    # what score_customers reads: the model's declared inputs and features, the CLV, the keys
    columns = ["customer_id", "cutoff", "clv_12m", *map(str, model._inputs()), *model.feature_names_]
    if not redis:
        cache = st.LruRecords(st.score_cache_size())
        return st.LazyStore(data.table, score, version, cache, columns), MemoryRecords()
    client, prefix = _redis()
    cache = st.RedisRecordCache(client, prefix, generation)
    return st.LazyStore(data.table, score, version, cache, columns), RedisRecords(client, prefix, generation)


# --------------------------------------------------------------------------------------------
# the heavy part of a reload, in a child process
# --------------------------------------------------------------------------------------------
def prepare_reload(ws_root: str, horizon_days: int, stamp: tuple, churn_ref: ChampionRef,
                   prefill: int) -> dict[str, dict[str, bytes]]:
    """Run in a child process on a reload: publish the online table of the new data (when it has none
    yet) and score its ``prefill`` most recent buyers with the churn champion; returns their records.

    The worker then maps the table (nothing to read) and puts the records in its score cache, so the
    customers asked for most are not scored under traffic right after the reload. With the Redis store
    the records go to Redis from here (shared by every worker) and nothing is returned.
    """
    from features.workspace import Workspace

    ws = Workspace(ws_root)
    data = load_data(ws, horizon_days, stamp)
    if prefill <= 0 or scores_at_startup():
        return {}
    base, _ = batch_store(load_champion(churn_ref), data, churn_ref.version)
    out = base.compute(data.table.warm_ids(prefill))
    return {} if base.backend == "redis" else out


def reload_prefill() -> int:
    """``CRMML_RELOAD_PREFILL``: customers scored ahead by a reload's child process (default 10,000)."""
    return int(os.environ.get("CRMML_RELOAD_PREFILL", "10000"))


def off_process(fn, *args):
    """``fn(*args)`` in a fresh child process (spawn); its result is returned, its exception raised.

    Why: a reload builds the new state in a thread of the serving worker, and pandas, LightGBM and
    the JSON encoding hold the GIL in long stretches: the event loop answering requests waited for
    them (p99 of /recommend 52-207 ms during a reload, BENCHMARKS.md). In a child process they hold
    its own GIL; the worker's reload thread only waits for the result (GIL released) and unpickles
    it (encoded records: byte strings, mostly memory copies). ``spawn``: the
    worker has threads, a fork of it could inherit held locks. ``CRMML_RELOAD_PROCESS=0`` builds
    in the worker's thread instead.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # niced: the worker answering requests comes first (os.nice: a builtin, the child imports nothing for it)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=os.nice,
                             initargs=(10,)) as pool:
        return pool.submit(fn, *args).result()


def reload_in_worker() -> bool:
    """``CRMML_RELOAD_PROCESS=0``: a reload builds everything in the worker's own thread (no child process)."""
    return os.environ.get("CRMML_RELOAD_PROCESS", "1") in ("0", "false", "off")


# --------------------------------------------------------------------------------------------
# the served state
# --------------------------------------------------------------------------------------------
@dataclass
class ServingState:
    """Everything one request needs; built whole and never changed after (readers keep a reference)."""

    models: dict[str, LoadedModel]
    store: st.OverlayStore  # the batch records with the online events' records on top
    rec: RecommenderAdapter
    data: st.CustomerData  # kept to reuse on a model-only reload
    as_of: str
    data_stamp: tuple
    loaded_at: str
    load_seconds: float
    warnings: list[str]
    online: OnlineEvents | None = None  # events accepted after the batch data (POST /events)
    warm_order: list = field(default_factory=list)  # known customers, most recent buyers first
    retired: threading.Event = field(default_factory=threading.Event)  # set when replaced
    nba: NextBestActions = field(default_factory=NextBestActions)  # loads the uplift model on first use

    def go_live(self, previous: ServingState | None = None) -> None:
        """Start warming the recommendation cache (``CRMML_REC_WARM=0`` turns it off), then freeze the heap.

        ``previous``: the state this one replaces (None for a starting worker: a full collection
        before the freeze is free, no traffic yet; after a reload under traffic, freeze only, see
        :func:`freeze_heap`). What this state took over from ``previous`` already warm (the online
        events of unchanged data, a recommender whose cache was filled) is not warmed again: the
        warm-ups compete with requests for the GIL, and repeating them made every forced reload a
        stall. The warm-ups that remain after a reload run with a short GIL switch interval
        (:func:`responsive`).
        """
        first = previous is None
        # after a reload, with requests in flight: a short switch interval; at start-up as before
        polite = (lambda fn: fn) if first else responsive
        if self.online is not None and (first or self.online is not previous.online):
            threading.Thread(target=polite(self.online.warm), name="crmml-online-warm", daemon=True).start()
        if (os.environ.get("CRMML_REC_WARM", "1") in ("0", "false", "off") or not self.warm_order
                or (previous is not None and self.rec is previous.rec and self.rec.warm_done)):
            self.rec.warm_done = True
            freeze_heap(full=first)
            return

        def warm_then_freeze():
            self.rec.warm(self.warm_order, self.retired)
            log.info("recommendation cache warm: %s customers in %s s", self.rec.warm_total, self.rec.warm_seconds)
            if not self.retired.is_set():
                freeze_heap(full=first)
            self.rec.warm_done = True

        threading.Thread(target=polite(warm_then_freeze), name="crmml-warm", daemon=True).start()


#: the GIL switch interval while background work (a reload, a warm-up) competes with requests
RESPONSIVE_SWITCH_SECONDS = 0.0005
_responsive_lock = threading.Lock()
_responsive_users = 0
_default_switch = sys.getswitchinterval()


class responsive:
    """Run with a short GIL switch interval: as a context manager, or wrapping a function (``responsive(fn)``).

    Why: a background thread in pure Python keeps the GIL until the interpreter asks it to drop it,
    ``sys.getswitchinterval()`` after another thread asked for it (5 ms by default). The event loop
    gives up the GIL at every socket wait, so a request waited up to 5 ms several times over while a
    reload or a warm-up ran. At 0.5 ms the loop gets the GIL back ten times sooner; the cost (more
    thread switches in the background work) only lasts while one runs. Nested and concurrent uses
    share one setting; the default comes back when the last one ends.
    """

    def __init__(self, fn=None):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        with responsive():
            return self.fn(*args, **kwargs)

    def __enter__(self):
        global _responsive_users
        with _responsive_lock:
            _responsive_users += 1
            sys.setswitchinterval(min(RESPONSIVE_SWITCH_SECONDS, _default_switch))
        return self

    def __exit__(self, *exc):
        global _responsive_users
        with _responsive_lock:
            _responsive_users -= 1
            if _responsive_users == 0:
                sys.setswitchinterval(_default_switch)
        return False


def freeze_heap(full: bool = True) -> None:
    """Move every object alive now (models, online data, libraries) out of the cyclic GC's reach.

    The worker holds millions of long-lived objects (MLflow, pandas, LightGBM, the state); a full
    collection over them stalls every request for hundreds of milliseconds, which is what the p99
    showed. ``gc.freeze()`` puts them in the permanent generation: later collections only look at
    new objects. ``full`` (start-up, before traffic): one full collection first. After a reload
    (``full=False``) there is none: undoing the freeze and collecting everything held the GIL for
    0.5-0.8 s under traffic (issue #16: the p99 during a reload). A replaced state is freed by
    reference counting when its last request ends; what of it sits in reference cycles and was
    frozen stays until the worker restarts (the worker RSS over reloads in ``bench/bench_soak.py``
    shows how much). ``CRMML_GC_FREEZE=0`` turns this off.
    """
    import gc

    if os.environ.get("CRMML_GC_FREEZE", "1") in ("0", "false", "off"):
        return
    started = time.perf_counter()
    if full:
        gc.unfreeze()
        gc.collect()
    gc.freeze()  # O(1): the generations' lists are spliced onto the permanent one
    if full:  # counting walks every frozen object (~30 ms for 600k): not under traffic
        log.info("heap frozen: %d objects in %.2f s", gc.get_freeze_count(), time.perf_counter() - started)


class _Phases:
    """Seconds per phase of a state build, for the log."""

    def __init__(self):
        self.last = time.perf_counter()
        self.spent: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now_ = time.perf_counter()
        self.spent[name] = round(now_ - self.last, 3)
        self.last = now_

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.3f} s" for k, v in self.spent.items())


def _horizon_of(data) -> int | None:
    return int(data.table.meta["horizon_days"]) if isinstance(data, st.TableData) else None


def _warm_order(data: st.TableData, limit: int) -> list:
    """Known customers, most recent buyers first: as many as the recommendation cache holds."""
    return data.table.warm_ids(limit)


def build_state(ws: Workspace, refs: dict[str, ChampionRef], warnings: list[str], previous: ServingState | None) -> ServingState:
    """Load models (reusing unchanged ones), online data (reused if unchanged) and the store over it.

    A reload under traffic (``previous`` given) that needs new data or a new churn store first runs
    :func:`prepare_reload` in a child process (:func:`off_process`): the online table of new data is
    built there and the most recent buyers are scored there, so this worker only maps the table and
    fills its score cache. ``CRMML_RELOAD_PROCESS=0`` does it all in this thread.
    """
    started = time.perf_counter()
    phases = _Phases()
    models: dict[str, LoadedModel] = {}
    for name, ref in refs.items():
        old = previous.models.get(name) if previous is not None else None
        if old is not None and old.ref.bentoml_tag == ref.bentoml_tag:
            models[name] = LoadedModel(ref=ref, pyfunc=old.pyfunc, impl=old.impl)
        else:
            models[name] = load_champion(ref)
    phases("models")
    stamp = st.data_stamp(ws)
    horizon = int(models[CHURN].impl.horizon_days)
    same_data = previous is not None and previous.data_stamp == stamp and _horizon_of(previous.data) in (None, horizon)
    same_churn = (previous is not None and previous.models[CHURN].ref.bentoml_tag == refs[CHURN].bentoml_tag
                  and previous.models[CHURN].ref.version == refs[CHURN].version)
    prefilled: dict = {}
    if previous is not None and not (same_data and same_churn) and not reload_in_worker():
        prefilled = off_process(prepare_reload, str(ws.root), horizon, stamp, refs[CHURN], reload_prefill())
        phases("child")
    if same_data:
        data = previous.data
    else:
        data = load_data(ws, horizon, stamp)
        stamp = data.stamp
    phases("data")
    if same_data and same_churn:
        store, online = previous.store, previous.online
    else:
        base, records = batch_store(models[CHURN], data, refs[CHURN].version)
        if prefilled and getattr(base, "cache", None) is not None:
            base.cache.put_many(prefilled)
        phases("store")
        online = OnlineEvents(ws, data, models[CHURN], refs[CHURN].version, records)
        store = st.OverlayStore(base, online)
        phases("online")
    same_rec = previous is not None and previous.models[RECOMMENDER].ref.bentoml_tag == refs[RECOMMENDER].bentoml_tag
    rec = previous.rec if same_rec else answering_recommender(models[RECOMMENDER])  # keeps its cache
    phases("recommender")
    warm_order = _warm_order(data, rec.cache.max_entries)
    phases("warm_order")
    log.info("state built: %s", phases)
    return ServingState(
        models=models,
        store=store,
        rec=rec,
        data=data,
        as_of=data.as_of_str,
        data_stamp=stamp,
        loaded_at=now(),
        load_seconds=round(time.perf_counter() - started, 3),
        warnings=list(warnings),
        online=online,
        warm_order=warm_order,
    )


def answering_recommender(model: LoadedModel, cache_size: int | None = None) -> RecommenderAdapter:
    """The adapter of a loaded recommender champion, after one call on every route's code path.

    A model that cannot answer (e.g. pickled by a different version of the code) fails here, at
    load, instead of answering 500 later: start-up refuses, a reload keeps the old state.
    """
    rec = RecommenderAdapter(model.impl, cache_size)
    try:
        rec.smoke()
    except Exception as exc:
        raise ModelLoadError(
            f"{model.ref.name} v{model.ref.version} cannot answer requests ({describe(exc)}); not serving it"
        ) from exc
    return rec


def check_servable(ws: Workspace) -> list[str]:
    """Resolve, import and load the champions as start-up will, and try the recommender; returns warnings.

    Raises what start-up would: NoModelError (no champion, or registry down and nothing imported),
    ModelLoadError (model files that cannot be loaded or a model that cannot answer). Run by the
    service before any worker is spawned; the models are dropped again (the worker loads its own).
    """
    refs, warnings = resolve_champions(ws)
    models = {name: load_champion(ref) for name, ref in refs.items()}
    answering_recommender(models[RECOMMENDER], cache_size=0)
    return warnings
