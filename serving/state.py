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

    def go_live(self, first: bool = True) -> None:
        """Start warming the recommendation cache (``CRMML_REC_WARM=0`` turns it off), then freeze the heap.

        ``first``: the state of a starting worker (a full collection before the freeze is free:
        no traffic yet); ``False`` for a reload under traffic (freeze only, see :func:`freeze_heap`).
        """
        if self.online is not None:
            threading.Thread(target=self.online.warm, name="crmml-online-warm", daemon=True).start()
        if os.environ.get("CRMML_REC_WARM", "1") in ("0", "false", "off") or not self.warm_order:
            self.rec.warm_done = True
            freeze_heap(full=first)
            return

        def warm_then_freeze():
            self.rec.warm(self.warm_order, self.retired)
            if not self.retired.is_set():
                freeze_heap(full=first)
            self.rec.warm_done = True

        threading.Thread(target=warm_then_freeze, name="crmml-warm", daemon=True).start()


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
    gc.freeze()
    log.info("heap frozen: %d objects in %.2f s", gc.get_freeze_count(), time.perf_counter() - started)


def _horizon_of(data) -> int | None:
    return int(data.table.meta["horizon_days"]) if isinstance(data, st.TableData) else None


def _warm_order(data: st.TableData, limit: int) -> list:
    """Known customers, most recent buyers first: as many as the recommendation cache holds."""
    return data.table.warm_ids(limit)


def build_state(ws: Workspace, refs: dict[str, ChampionRef], warnings: list[str], previous: ServingState | None) -> ServingState:
    """Load models (reusing unchanged ones), online data (reused if unchanged) and encode the store."""
    started = time.perf_counter()
    models: dict[str, LoadedModel] = {}
    for name, ref in refs.items():
        old = previous.models.get(name) if previous is not None else None
        if old is not None and old.ref.bentoml_tag == ref.bentoml_tag:
            models[name] = LoadedModel(ref=ref, pyfunc=old.pyfunc, impl=old.impl)
        else:
            models[name] = load_champion(ref)
    stamp = st.data_stamp(ws)
    horizon = int(models[CHURN].impl.horizon_days)
    if previous is not None and previous.data_stamp == stamp and _horizon_of(previous.data) in (None, horizon):
        data = previous.data
    else:
        data = load_data(ws, horizon, stamp)
        stamp = data.stamp
    same_churn = previous is not None and previous.models[CHURN].ref.bentoml_tag == refs[CHURN].bentoml_tag
    if same_churn and data is previous.data and previous.models[CHURN].ref.version == refs[CHURN].version:
        store, online = previous.store, previous.online
    else:
        base, records = batch_store(models[CHURN], data, refs[CHURN].version)
        online = OnlineEvents(ws, data, models[CHURN], refs[CHURN].version, records)
        store = st.OverlayStore(base, online)
    same_rec = previous is not None and previous.models[RECOMMENDER].ref.bentoml_tag == refs[RECOMMENDER].bentoml_tag
    rec = previous.rec if same_rec else answering_recommender(models[RECOMMENDER])  # keeps its cache
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
        warm_order=_warm_order(data, rec.cache.max_entries),
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
