"""Build the feature tables of a workspace: what `crmml features` and the pipeline's features step run.

the churn feature matrix (``features.churn_features.feature_matrix``: point-in-time features with
churn labels, one row per customer and cutoff, stored per cutoff for every stage that reads it),
``customer360`` (one row per customer as of a date) and ``features/features_summary.json``
(:func:`summary_json`), all written into the workspace.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from features import churn_features, insight, snapshots
from features.dates import as_of_date
from features.engines import connect
from features.workspace import Workspace, atomic_write


def summary_json(ws: Workspace) -> Path:
    """Where :func:`build_features` writes its summary."""
    return ws.features_dir / "features_summary.json"


def build_features(workspace=None, cutoff: str | None = None, cutoffs: str | None = None, horizon: int = 90,
                   eligibility_days: int = 365, engine: str = "duckdb", as_of: str | None = None,
                   include_ineligible: bool = False, customer360: bool = True) -> dict:
    """Store the churn feature matrix (``features.churn_features.feature_matrix``) for the given cutoffs
    and for those that training, the backtest, the registry gate, scoring and serving ask for; write
    ``customer360`` (kind="features") and ``features_summary.json``."""
    ws = Workspace(workspace)
    if not ws.has_table("events"):
        raise FileNotFoundError(f"no events in workspace {ws.root}; run `crmml ingest` or `crmml generate` first")
    ev = ws.read_table("events", columns=["timestamp"])
    dates: list = []
    if cutoffs:
        dates += snapshots.parse_cutoffs(cutoffs)
    if cutoff:
        dates.append(pd.Timestamp(cutoff).normalize())
    if not dates:
        dates = snapshots.default_cutoffs(ev, horizon_days=horizon)
    dates = sorted(set(dates))
    started = time.perf_counter()
    # stored cutoff by cutoff (never the whole matrix in memory); kept: the columns of the summary
    snap = pd.concat(churn_features.store_matrix(ws, dates, horizon_days=horizon, eligibility_days=eligibility_days,
                                                 engine=engine, include_ineligible=include_ineligible),
                     ignore_index=True)
    t_snap = time.perf_counter() - started
    # the cutoff sets of the later stages (each set's BG/NBD fits chain through it): stored now, read then
    started = time.perf_counter()
    stages = churn_features.stage_cutoffs(ev["timestamp"].min(), as_of_date(ev["timestamp"]), horizon)
    enough = {"train": 2, "backtest": 3}  # training needs two labelled cutoffs (see training.churn)
    for name, cuts in stages.items():
        if len(cuts) >= enough.get(name, 1):
            churn_features.store_matrix(ws, cuts, horizon_days=horizon, eligibility_days=eligibility_days,
                                        engine=engine)
    t_stages = time.perf_counter() - started
    summary = {
        "engine": engine,
        "horizon_days": horizon,
        "eligibility_days": eligibility_days,
        "include_ineligible": include_ineligible,
        "rows": int(len(snap)),
        "focus_cutoff": str(pd.Timestamp(cutoff).date()) if cutoff else str(dates[-1].date()),
        **snapshots.summary(snap),
        "stage_cutoffs": {name: [str(c.date()) for c in cuts] for name, cuts in stages.items()},
        "seconds": {"snapshots": round(t_snap, 2), "stage_cutoffs": round(t_stages, 2)},
        "data_fingerprint": ws.data_fingerprint(),
    }
    if customer360:
        started = time.perf_counter()
        c360 = insight.build_customer360(ws, as_of=as_of, engine=engine, con=connect(engine),
                                         eligibility_days=eligibility_days)
        summary["seconds"]["customer360"] = round(time.perf_counter() - started, 2)
        ws.write_table(insight.CUSTOMER360, c360, kind="features")
        summary["customer360"] = {
            "as_of": str(c360["as_of"].iloc[0]) if len(c360) else as_of,
            "customers": int(len(c360)),
            "sizes": insight.segment_sizes(c360),
        }
    atomic_write(summary_json(ws), lambda tmp: tmp.write_text(json.dumps(summary, indent=2, default=str)))
    return summary
