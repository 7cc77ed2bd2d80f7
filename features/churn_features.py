"""Every input of the churn model, and the one function that gives its feature matrix.

The churn model sees, per (customer, cutoff), three groups of columns, all computed from data
strictly before the cutoff and all described in ``features/catalog.py``:

* the **catalog features** and the labels (``features.snapshots.build_snapshots``, one Ibis query
  for many cutoffs on DuckDB or Spark);
* the **behaviour extras** (:func:`behaviour_at`: time-decayed purchase days, active months,
  same-season-last-year purchase days, the customer's own gap history, first purchase,
  :func:`season_affinity`), ``catalog.EXTRAS`` without the ``bg_`` ones;
* the **BG/NBD features** (``features/bgnbd.py``: population parameters fitted per cutoff, then
  each customer's values from them).

:func:`feature_matrix` joins them: the one code path that computes the churn feature matrix for
training, the backtest, the registry gate, batch scoring and serving. It stores what it computes in
the workspace (``features/churn_matrix/``) keyed by the data fingerprint, the horizon, the
eligibility window and the cutoff, so that ``crmml features`` computes the matrix once and every
later stage reads it; any set of cutoffs reuses the stored ones and computes only the others.
It stores every customer seen before a cutoff (``include_ineligible=True``); the eligible rows are
selected on reading. Large shops stay in bounded memory: the cutoffs to compute go to the engine a few at
a time (:data:`ROWS_PER_QUERY`), :func:`store_matrix` (``crmml features``) holds one cutoff at a time,
the BG/NBD parameters are fitted on a hash sample of customers (:data:`BGNBD_SAMPLE`) and training reads
a hash sample of customers cutoff by cutoff (``feature_matrix(sample=...)``; ``features/sampling.py``).

Written for one customer as well as for all: :func:`behaviour_at` and :func:`season_affinity` are
pure functions of a purchase table and a cutoff (no state between calls), and the BG/NBD values of a
customer need only the population parameters of that cutoff, which are kept beside the matrix
(:func:`stored_bgnbd_params`); the item seasonality of :func:`season_affinity` is a shop-wide
statistic of the year before the cutoff, like those parameters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from features import catalog
from features.bgnbd import BG_COLUMNS, BGNBD, bgnbd_features, fit_at, purchase_days
from features.dates import newest_labelled_cutoff, training_cutoffs
from features.snapshots import (
    DEFAULT_ELIGIBILITY,
    DEFAULT_HORIZON,
    SnapshotQuery,
    build_snapshots,
)
from features.workspace import Workspace, atomic_write

EXTRA_FEATURES: list[str] = catalog.extra_feature_names()  # model order: the behaviour extras, then BG/NBD
BEHAVIOUR_FEATURES: list[str] = [n for n in EXTRA_FEATURES if n not in BG_COLUMNS]
KEYS = ["customer_id", "cutoff"]

log = logging.getLogger(__name__)

MATRIX_DIR = "churn_matrix"  # features/churn_matrix/<fingerprint>/h<horizon>_e<eligibility>/<cutoff>.parquet


# ============================================================================================
# behaviour extras
# ============================================================================================
def purchase_lines(events: pd.DataFrame) -> pd.DataFrame:
    """The purchase lines of an events table: ``customer_id`` (str), ``item_id``, ``timestamp``, ``amount``."""
    mask = (events["event_type"].astype("string") == "purchase").fillna(False).to_numpy(bool)
    cols = [c for c in ("customer_id", "item_id", "timestamp", "amount") if c in events.columns]
    lines = events.loc[mask, cols].copy()
    lines["customer_id"] = lines["customer_id"].astype(str)
    lines["amount"] = pd.to_numeric(lines.get("amount"), errors="coerce")
    return lines


def behaviour_at(days: pd.DataFrame, lines: pd.DataFrame, cutoff, horizon_days: int = DEFAULT_HORIZON,
                 season: pd.Series | None = None) -> pd.DataFrame:
    """The behaviour extras at ``cutoff`` of each customer with a purchase day before it.

    ``days``: :func:`features.bgnbd.purchase_days` of the events, ``lines``: :func:`purchase_lines`
    (rows after the cutoff are ignored); ``season``: :func:`item_seasonality` of the whole shop when
    ``lines`` holds only some customers (computed from ``lines`` otherwise). Returns ``customer_id`` (sorted), the
    :data:`BEHAVIOUR_FEATURES` (float) and ``cutoff``; empty without a purchase before the cutoff.
    """
    cutoff = pd.Timestamp(cutoff).normalize()
    has_items = "item_id" in lines.columns and lines["item_id"].notna().any() and lines["amount"].notna().any()
    day_arr = days["day"].to_numpy("datetime64[D]")
    cut = np.datetime64(cutoff.date(), "D")
    m = day_arr < cut
    if not m.any():
        return pd.DataFrame(columns=["customer_id", *BEHAVIOUR_FEATURES, "cutoff"])
    d = pd.DataFrame({"customer_id": days["customer_id"].to_numpy()[m], "day": day_arr[m],
                      "amount": days["amount"].to_numpy(float)[m]})
    d["age"] = (cut - d["day"].to_numpy("datetime64[D]")).astype("timedelta64[D]").astype(float)
    d = d.sort_values(["customer_id", "day"], kind="stable")
    age = d["age"].to_numpy()
    ln2 = math.log(2.0)
    for hl in (30, 90, 365):
        d[f"ewm_orders_{hl}"] = np.exp(-age * ln2 / hl)
    d["in_365"] = age <= 365
    d["month_bin"] = np.where(age <= 365, np.floor(age / 30.4), np.nan)
    d["ly90"] = ((age > 365 - horizon_days) & (age <= 365)).astype(float)
    d["ly180"] = ((age > 365 - 2 * horizon_days) & (age <= 365)).astype(float)
    prev = d.groupby("customer_id", sort=False)["age"].shift(1)
    d["gap"] = prev - d["age"]  # days between consecutive purchase days
    g = d.groupby("customer_id", sort=True)
    f = pd.DataFrame(index=g.size().index)
    for hl in (30, 90, 365):
        f[f"ewm_orders_{hl}"] = g[f"ewm_orders_{hl}"].sum()
    f["active_months_365d"] = g["month_bin"].nunique()
    f["purchase_days_ly_next90"] = g["ly90"].sum()
    f["purchase_days_ly_next180"] = g["ly180"].sum()
    f["max_gap_days"] = g["gap"].max()
    f["last_gap_days"] = g["gap"].last()
    recency = g["age"].min()
    f["first_purchase_days"] = g["age"].max()
    f["recency_max_gap_ratio"] = recency / f["max_gap_days"].where(f["max_gap_days"] > 0)
    # the customer's own history of breaks: of the past gaps longer than the current absence,
    # how many also lasted another horizon (smoothed towards 1/2)
    rec_row = d["customer_id"].map(recency).to_numpy()
    gap = d["gap"].to_numpy()
    longer = np.nan_to_num(gap, nan=-1) > rec_row
    much_longer = np.nan_to_num(gap, nan=-1) > rec_row + horizon_days
    n_longer = pd.Series(longer, index=d.index).groupby(d["customer_id"]).sum()
    n_much = pd.Series(much_longer, index=d.index).groupby(d["customer_id"]).sum()
    f["own_gap_survival"] = (n_much + 1.0) / (n_longer + 2.0)
    if has_items:
        f["season_affinity"] = season_affinity(lines, cutoff, horizon_days, season).reindex(f.index)
    else:
        f["season_affinity"] = np.nan
    f["cutoff"] = cutoff
    return f.reset_index()


def _last_year(lines: pd.DataFrame, cutoff) -> pd.DataFrame:
    cutoff = pd.Timestamp(cutoff)
    start = cutoff - pd.Timedelta(days=365)
    mask = (lines["timestamp"] < cutoff) & (lines["timestamp"] >= start)
    return lines.loc[mask & lines["amount"].gt(0) & lines["item_id"].notna(),
                     ["customer_id", "item_id", "timestamp", "amount"]]


def item_seasonality(lines: pd.DataFrame, cutoff, horizon_days: int) -> pd.Series:
    """Each item's seasonality at ``cutoff``: the share of its last-year sales that fell in the same
    weeks one year earlier (``[c - 365d, c - 365d + horizon)``), divided by the same share for the
    whole shop (a shop-wide statistic of the year before the cutoff). All NaN when the shop sold
    nothing in those weeks; empty without a sale in the year."""
    ln = _last_year(lines, cutoff)
    if ln.empty:
        return pd.Series(dtype=float)
    start = pd.Timestamp(cutoff) - pd.Timedelta(days=365)
    same = (ln["timestamp"] < start + pd.Timedelta(days=horizon_days)).to_numpy()
    item_total = ln.groupby("item_id", sort=False)["amount"].sum()
    item_same = ln.loc[same].groupby("item_id", sort=False)["amount"].sum().reindex(item_total.index).fillna(0.0)
    shop_share = item_same.sum() / item_total.sum()
    if not shop_share > 0:
        return pd.Series(np.nan, index=item_total.index)
    # items sold only a little get shrunk towards the shop's share
    prior = 5.0 * float(item_total.median())
    return (item_same + prior * shop_share) / (item_total + prior) / shop_share


def season_affinity(lines: pd.DataFrame, cutoff, horizon_days: int, season: pd.Series | None = None) -> pd.Series:
    """Spend-weighted seasonality (:func:`item_seasonality`) of the items a customer bought in the last year:
    above 1 the customer buys products that sell in the coming season.

    ``season``: the item seasonality of the whole shop, when ``lines`` holds only some customers.
    """
    ln = _last_year(lines, cutoff)
    if ln.empty:
        return pd.Series(dtype=float)
    if season is None:
        season = item_seasonality(lines, cutoff, horizon_days)
    if not season.notna().any():
        return pd.Series(np.nan, index=pd.Index(ln["customer_id"].unique()))
    w = ln["amount"].to_numpy()
    s = ln["item_id"].map(season).to_numpy(float)
    num = pd.Series(w * s).groupby(ln["customer_id"].to_numpy()).sum()
    den = pd.Series(w).groupby(ln["customer_id"].to_numpy()).sum()
    return num / den


# ============================================================================================
# the cutoffs the stages ask for
# ============================================================================================
def backtest_cutoffs(first_event, cutoff, horizon_days: int, step_days: int = 30,
                     min_history_days: int = 60) -> list[pd.Timestamp]:
    """The cutoffs of a backtest at ``cutoff``: its training cutoffs (``features.dates.training_cutoffs``,
    labels ending on or before ``cutoff``), then ``cutoff`` itself."""
    return training_cutoffs(first_event, cutoff, horizon_days, step_days, min_history_days) + [
        pd.Timestamp(cutoff).normalize()]


def final_training_cutoffs(first_event, as_of, horizon_days: int, step_days: int = 30,
                           min_history_days: int = 60) -> list[pd.Timestamp]:
    """The cutoffs the final model trains on: every ``step_days`` back from the newest labelled one."""
    # training_cutoffs(first, E) ends at E - horizon: E = as_of - 1 day gives the newest labelled cutoff
    return training_cutoffs(first_event, newest_labelled_cutoff(as_of, 0), horizon_days, step_days, min_history_days)


def stage_cutoffs(first_event, as_of, horizon_days: int, step_days: int = 30,
                  min_history_days: int = 60) -> dict[str, list[pd.Timestamp]]:
    """The cutoff sets that ``crmml train churn`` (backtest, final model), ``crmml models promote``
    (gate), ``crmml score`` and ``crmml serve`` ask :func:`feature_matrix` for, with their defaults."""
    labelled = newest_labelled_cutoff(as_of, horizon_days)
    return {
        "train": final_training_cutoffs(first_event, as_of, horizon_days, step_days, min_history_days),
        "backtest": backtest_cutoffs(first_event, labelled, horizon_days, step_days, min_history_days),
        "gate": [labelled],
        "score": [pd.Timestamp(as_of).normalize()],
    }


# ============================================================================================
# the matrix
# ============================================================================================
def _normal(cutoffs) -> list[pd.Timestamp]:
    return sorted({pd.Timestamp(c).normalize() for c in cutoffs})


def _source(source) -> tuple[object, Workspace | None]:
    """(source for build_snapshots, the workspace to cache in or None) of a Workspace, a path or a dict."""
    if isinstance(source, dict):
        return source, None
    ws = source if isinstance(source, Workspace) else Workspace(source)
    return ws, ws


def _events(src, events: pd.DataFrame | None) -> pd.DataFrame:
    if events is not None:
        return events
    return src["events"] if isinstance(src, dict) else src.read_table("events")


def _init_key(model: BGNBD | None) -> str:
    """Names the starting point of a BG/NBD fit: its result depends on it (at the optimiser's tolerance)."""
    if model is None:
        return "cold"
    return hashlib.sha256(json.dumps([model.r, model.alpha, model.a, model.b]).encode()).hexdigest()[:16]


class _Store:
    """The stored matrix of one workspace, data fingerprint, horizon and eligibility window.

    ``<cutoff>.parquet``: catalog features, labels and behaviour extras of every customer seen before
    the cutoff. ``bgnbd/<cutoff>_<init>.parquet`` + ``.json``: the BG/NBD values and population
    parameters at the cutoff, for the fit started from ``init`` (each cutoff's fit starts from the
    previous requested cutoff's parameters, so the start is part of the key).
    """

    def __init__(self, ws: Workspace, horizon_days: int, eligibility_days: int):
        self.fingerprint = ws.data_fingerprint()
        self.base = ws.features_dir / MATRIX_DIR
        self.dir = self.base / self.fingerprint[:16] / f"h{int(horizon_days)}_e{int(eligibility_days)}"

    def part(self, cutoff: pd.Timestamp) -> Path:
        return self.dir / f"{cutoff.date()}.parquet"

    def bg(self, cutoff: pd.Timestamp, init: str) -> tuple[Path, Path]:
        stem = self.dir / "bgnbd" / f"{cutoff.date()}_{init}"
        return stem.with_suffix(".parquet"), stem.with_suffix(".json")

    def drop_stale(self) -> None:
        """Remove the matrices of other data (an earlier fingerprint): they can never be read again."""
        if self.base.exists():
            for d in self.base.iterdir():
                if d.is_dir() and d.name != self.fingerprint[:16]:
                    shutil.rmtree(d, ignore_errors=True)


def _write_parquet(path: Path, df: pd.DataFrame) -> None:
    _store_file(path, lambda tmp: df.to_parquet(tmp, index=False))


def _store_file(path: Path, write) -> None:
    """Store one file of the matrix atomically; a workspace that cannot be written (a read-only mount of
    the service) only loses the cache, never the answer."""
    try:
        atomic_write(path, write)
    except OSError as exc:
        log.warning("churn feature matrix not stored (%s): %s", path.parent, exc)


def _behaviour_parts(src, cutoffs: list[pd.Timestamp], horizon_days: int, eligibility_days: int, engine: str,
                     days: pd.DataFrame, lines: pd.DataFrame, season: pd.Series | None = None,
                     snapshots: SnapshotQuery | None = None) -> dict[pd.Timestamp, pd.DataFrame]:
    """Catalog features + labels (every customer seen) with the behaviour extras, per cutoff.
    ``snapshots``: a compiled query for one cutoff (``src`` a dict of a few customers' frames)."""
    if snapshots is not None:
        snap = snapshots(src, cutoffs[0])
    else:
        snap = build_snapshots(src, cutoffs, horizon_days=horizon_days, eligibility_days=eligibility_days,
                               engine=engine, include_ineligible=True)
    snap["customer_id"] = snap["customer_id"].astype(str)
    snap["cutoff"] = snap["cutoff"].astype("datetime64[us]")
    out = {}
    for cutoff in cutoffs:
        part = snap[snap["cutoff"] == cutoff].reset_index(drop=True)
        extra = behaviour_at(days, lines, cutoff, horizon_days, season)
        extra["cutoff"] = extra["cutoff"].astype("datetime64[us]")
        extra["customer_id"] = extra["customer_id"].astype(str)
        for c in BEHAVIOUR_FEATURES:
            extra[c] = extra[c].astype("float64")
        out[cutoff] = part.merge(extra[KEYS + BEHAVIOUR_FEATURES], on=KEYS, how="left")
    return out


ROWS_PER_QUERY = 2_000_000
"""About how many (customer, cutoff) rows one snapshot query computes: the cutoffs still to compute
go to the engine in groups of ``ROWS_PER_QUERY // customers`` (at least one), each group stored before
the next is computed. One query for all cutoffs is fastest, but its result and the engine's working
memory grow with customers x cutoffs: ~20 cutoffs of 1,000,000 customers held more than 21 GiB (issue
#17). Below this size (2,000 customers x 24 cutoffs = 48,000 rows) everything is one query as before."""

BGNBD_SAMPLE = 100_000
"""The BG/NBD population parameters of a cutoff are fitted on a hash sample of about this many of the
customers with a purchase before it (``features.sampling``), then applied to all of them: the same
fit as before for shops up to this size."""

PURCHASE_COLUMNS = ["customer_id", "item_id", "event_type", "timestamp", "amount"]  # purchase_days + purchase_lines


def _purchase_events(src, events: pd.DataFrame | None) -> pd.DataFrame:
    """The events that :func:`purchase_days` and :func:`purchase_lines` read: from a workspace, only the
    purchase rows and their columns (22.8M events of 1M customers in full take several GiB)."""
    if events is not None:
        return events
    if isinstance(src, dict):
        return src["events"]
    return pd.read_parquet(src.table_path("events"), columns=PURCHASE_COLUMNS,
                           filters=[("event_type", "==", "purchase")])


def _groups(cutoffs: list[pd.Timestamp], customers: int, rows: int | None = None) -> list[list[pd.Timestamp]]:
    """``cutoffs`` in consecutive groups of about ``rows`` (default ``ROWS_PER_QUERY``) (customer, cutoff) rows."""
    size = max(1, int(rows or ROWS_PER_QUERY) // max(int(customers), 1))
    return [cutoffs[i:i + size] for i in range(0, len(cutoffs), size)]


def _matrix_parts(source, cutoffs, horizon_days: int, eligibility_days: int, engine: str,
                  events: pd.DataFrame | None, cache: bool, bg_sample: int | None):
    """Yield ``(cutoff, part)`` in cutoff order: every customer seen before it, every column of
    :func:`feature_matrix`. Only one group of cutoffs (``ROWS_PER_QUERY``) is in memory at a time;
    each computed part is stored as soon as its group is done."""
    cuts = _normal(cutoffs)
    if not cuts:
        raise ValueError("no cutoff dates given")
    src, ws = _source(source)
    store = _Store(ws, horizon_days, eligibility_days) if (ws is not None and cache) else None
    stored = {c for c in cuts if store is not None and store.part(c).exists()}
    missing = [c for c in cuts if c not in stored]
    days = lines = None
    groups: dict[pd.Timestamp, list[pd.Timestamp]] = {}  # first missing cutoff of a group -> the group
    if missing:
        ev = _purchase_events(src, events)
        days, lines = purchase_days(ev), purchase_lines(ev)
        del ev
        if store is not None:
            store.drop_stale()
        groups = {g[0]: g for g in _groups(missing, days["customer_id"].nunique())}
    computed: dict[pd.Timestamp, pd.DataFrame] = {}
    previous: BGNBD | None = None  # BG/NBD along the requested cutoffs, each fit started from the previous one
    for c in cuts:
        if c in groups:
            computed = _behaviour_parts(src, groups[c], horizon_days, eligibility_days, engine, days, lines)
            if store is not None:
                for cc, part in computed.items():
                    _write_parquet(store.part(cc), part)
        part = computed.pop(c) if c in computed else pd.read_parquet(store.part(c))
        bg, model = None, None
        if store is not None:
            values, params = store.bg(c, _init_key(previous))
            if values.exists() and params.exists():
                bg = pd.read_parquet(values)
                p = json.loads(params.read_text())
                model = BGNBD(**p) if p else None
        if bg is None:
            if days is None:
                days = purchase_days(_purchase_events(src, events))
            summary, model = fit_at(days, c, init=previous, sample=bg_sample)
            if model is not None:
                bg = bgnbd_features(model, summary, c, horizon_days)[["customer_id", *BG_COLUMNS]]
                bg["customer_id"] = bg["customer_id"].astype(str)
            else:
                bg = pd.DataFrame({"customer_id": pd.Series([], dtype=str),
                                   **{k: pd.Series([], dtype="float64") for k in BG_COLUMNS}})
            del summary
            if store is not None:
                values, params = store.bg(c, _init_key(previous))
                _store_file(params, lambda tmp: tmp.write_text(json.dumps(
                    {k: getattr(model, k) for k in ("r", "alpha", "a", "b", "penalizer", "n_customers", "method_")}
                    if model is not None else {})))
                _write_parquet(values, bg)
        if model is not None:
            previous = model
        yield c, part.merge(bg, on="customer_id", how="left")


def feature_matrix(source, cutoffs, horizon_days: int = DEFAULT_HORIZON, eligibility_days: int = DEFAULT_ELIGIBILITY,
                   include_ineligible: bool = False, engine: str = "duckdb", events: pd.DataFrame | None = None,
                   cache: bool = True, sample: int | None = None) -> pd.DataFrame:
    """The churn model's feature matrix: one row per (customer, cutoff), every input of the model.

    ``source``: a ``Workspace``, a workspace path, or a dict of canonical DataFrames (see
    ``build_snapshots``). Rows: the customers eligible at each cutoff (a purchase in the
    ``eligibility_days`` before it), or every customer seen before it with ``include_ineligible``.
    Columns: ``customer_id``, ``cutoff``, the catalog features, ``eligible``, ``label_available``,
    ``churned`` (labels over ``horizon_days``), then :data:`EXTRA_FEATURES` (NaN where a customer
    has no purchase before the cutoff); sorted by cutoff and customer.

    With a workspace (and ``cache``) the matrix of each cutoff is read from the workspace when it
    was computed before for the same data, horizon and eligibility window, and stored otherwise.
    ``events``: the events table when the caller has it already (read from the source otherwise,
    and only when something must be computed). ``engine``: ``duckdb`` or ``spark`` (same values).
    ``sample``: only the rows of a hash sample of about this many customers (``features.sampling``;
    the same customers at every cutoff; all of them when the shop has no more), selected cutoff by
    cutoff so that the whole matrix is never in memory (training on a large shop).
    """
    from features.sampling import in_sample

    n_customers = _customer_count(source) if sample else None
    frames = []
    for _, part in _matrix_parts(source, cutoffs, horizon_days, eligibility_days, engine, events, cache,
                                 BGNBD_SAMPLE):
        if not include_ineligible:
            part = part[part["eligible"].to_numpy(bool)]
        if sample and n_customers > int(sample):
            part = part[in_sample(part["customer_id"].to_numpy(), sample, n_customers)]
        frames.append(part)
    out = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0].reset_index(drop=True)
    return out


def store_matrix(source, cutoffs, horizon_days: int = DEFAULT_HORIZON, eligibility_days: int = DEFAULT_ELIGIBILITY,
                 engine: str = "duckdb", include_ineligible: bool = False) -> list[pd.DataFrame]:
    """Compute and store the matrix of ``cutoffs`` in the workspace ``source`` (what :func:`feature_matrix`
    would return, one cutoff in memory at a time); return each cutoff's ``cutoff``, ``eligible``,
    ``label_available`` and ``churned`` columns (rows as ``include_ineligible``), for summaries."""
    out = []
    for _, part in _matrix_parts(source, cutoffs, horizon_days, eligibility_days, engine, None, True, BGNBD_SAMPLE):
        if not include_ineligible:
            part = part[part["eligible"].to_numpy(bool)]
        out.append(part[["cutoff", "eligible", "label_available", "churned"]].reset_index(drop=True))
    return out


def _customer_count(source) -> int:
    """Distinct customers of the events (the population a training sample is drawn from)."""
    src, _ = _source(source)
    if isinstance(src, dict):
        return int(src["events"]["customer_id"].nunique())
    import duckdb

    query = "SELECT count(DISTINCT customer_id) FROM read_parquet(?)"
    return int(duckdb.execute(query, [str(src.table_path("events"))]).fetchone()[0])


def stored_cutoffs(ws: Workspace, horizon_days: int = DEFAULT_HORIZON,
                   eligibility_days: int = DEFAULT_ELIGIBILITY) -> list[pd.Timestamp]:
    """The cutoffs whose matrix is stored in ``ws`` for its current data, horizon and eligibility window."""
    store = _Store(ws, horizon_days, eligibility_days)
    return sorted(pd.Timestamp(p.stem) for p in store.dir.glob("*.parquet")) if store.dir.exists() else []


def stored_bgnbd_params(ws: Workspace, cutoff, horizon_days: int = DEFAULT_HORIZON,
                        eligibility_days: int = DEFAULT_ELIGIBILITY) -> list[dict]:
    """The BG/NBD population parameters stored at ``cutoff`` (one per fit start; see ``_Store``)."""
    store = _Store(ws, horizon_days, eligibility_days)
    stem = f"{pd.Timestamp(cutoff).normalize().date()}_"
    return [json.loads(p.read_text()) for p in sorted((store.dir / "bgnbd").glob(f"{stem}*.json"))]


# ============================================================================================
# some customers' rows under the shop-wide statistics of a cutoff (serving, online)
# ============================================================================================
def stored_bgnbd_model(ws: Workspace, cutoff, horizon_days: int = DEFAULT_HORIZON,
                       eligibility_days: int = DEFAULT_ELIGIBILITY) -> BGNBD | None:
    """The BG/NBD population parameters a one-cutoff :func:`feature_matrix` call stored at ``cutoff``
    (the fit started cold, as for scoring), or None when not stored."""
    _, params = _Store(ws, horizon_days, eligibility_days).bg(pd.Timestamp(cutoff).normalize(), _init_key(None))
    if not params.exists():
        return None
    p = json.loads(params.read_text())
    return BGNBD(**p) if p else None


def customer_rows(tables: dict, cutoff, bg_model: BGNBD | None, season: pd.Series | None,
                  horizon_days: int = DEFAULT_HORIZON, eligibility_days: int = DEFAULT_ELIGIBILITY,
                  snapshots: SnapshotQuery | None = None) -> pd.DataFrame:
    """The feature matrix rows (every customer seen, as ``include_ineligible``) of the customers in ``tables``.

    ``tables``: canonical tables holding only these customers' rows (``items`` may be whole); the
    shop-wide statistics come from the batch: ``bg_model`` the BG/NBD population parameters
    (:func:`stored_bgnbd_model`), ``season`` the :func:`item_seasonality` at the cutoff, ``snapshots``
    the shop's compiled catalog-feature query (``features.snapshots.SnapshotQuery``: the shop's data
    facts, and fast for repeated calls; ``build_snapshots`` on ``tables`` without it). The same
    definitions as :func:`feature_matrix` (catalog features, :func:`behaviour_at`, ``bgnbd_features``):
    with the statistics of the same data, the rows are the batch rows.
    """
    from features.bgnbd import transaction_summary

    cutoff = pd.Timestamp(cutoff).normalize()
    ev = tables["events"]
    days, lines = purchase_days(ev), purchase_lines(ev)
    part = _behaviour_parts(tables, [cutoff], horizon_days, eligibility_days, "duckdb", days, lines, season,
                            snapshots)[cutoff]
    summary = transaction_summary(None, cutoff, days=days)
    if bg_model is not None and len(summary):
        bg = bgnbd_features(bg_model, summary, cutoff, horizon_days)[["customer_id", *BG_COLUMNS]]
        bg["customer_id"] = bg["customer_id"].astype(str)
    else:
        bg = pd.DataFrame({"customer_id": pd.Series([], dtype=str),
                           **{k: pd.Series([], dtype="float64") for k in BG_COLUMNS}})
    return part.merge(bg, on="customer_id", how="left")
