"""Benchmark: the churn model against its baselines at several evaluation cutoffs (issue 15, item 2).

For each cutoff, ``training.churn.evaluate_protocol`` trains on labels that end on or before it and
scores the customers eligible at it; the model, BG/NBD, RFM and recency are compared on the same
customers (ROC-AUC, PR-AUC, Brier, ECE), with what the model chose on its inner validation
(``ChurnModel.chosen_``: the blend, the LightGBM part alone or a baseline it fell back to).
The feature matrix of each cutoff is cached in the workspace, so a second run only trains.

    python -m bench.churn_cutoffs --workspace /tmp/wsuci                 # the four quarterly UCI cutoffs
    python -m bench.churn_cutoffs --workspace /tmp/wsuci --tune --label tuned
    python -m bench.churn_cutoffs --workspace /tmp/wsuci --set blend=none --label lgbm-only

Results are printed as a table and written to ``bench/results/churn_cutoffs[-LABEL].json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CUTOFFS = ("2010-12-11", "2011-03-12", "2011-06-11", "2011-09-10")
NAMES = ("model", "bgnbd", "rfm", "recency")
METRICS = ("auc", "pr_auc", "brier", "ece")


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def run(workspace: str, cutoffs=CUTOFFS, tune: bool = False, n_trials: int | None = None,
        model_kwargs: dict | None = None) -> dict:
    from features.workspace import Workspace
    from training import churn

    ws = Workspace(workspace)
    rows = []
    for c in cutoffs:
        t0 = time.perf_counter()
        kw = {} if n_trials is None else {"n_trials": n_trials}
        ev = churn.evaluate_protocol(ws, c, tune=tune, model_kwargs=model_kwargs, **kw)
        m = ev.model
        rows.append({
            "cutoff": str(ev.cutoff.date()),
            "n_customers": len(ev.y),
            "churn_rate": float(np.mean(ev.y)),
            "metrics": {n: {k: float(ev.metrics[n][k]) for k in METRICS} for n in NAMES},
            "chosen": getattr(m, "chosen_", None),
            "inner_validation": getattr(m, "choice_scores_", None),
            "seconds": round(time.perf_counter() - t0, 1),
            "model_fit_seconds": ev.timings.get("model_fit"),
        })
        r = rows[-1]
        print(f"{r['cutoff']}  chosen={r['chosen']}  " + "  ".join(
            f"{n} auc {r['metrics'][n]['auc']:.4f} brier {r['metrics'][n]['brier']:.4f}" for n in NAMES[:3])
            + f"  ({r['seconds']} s)", flush=True)
    mean = {n: {k: float(np.mean([r["metrics"][n][k] for r in rows])) for k in METRICS} for n in NAMES}
    return {"cutoffs": rows, "mean": mean, "tune": tune, "model_kwargs": model_kwargs or {}}


def table(result: dict) -> str:
    """Markdown table: one line per cutoff and name, then the means."""
    lines = ["| cutoff | | " + " | ".join(METRICS) + " |", "|---|---|" + "---:|" * len(METRICS)]
    for r in result["cutoffs"] + [{"cutoff": "mean", "metrics": result["mean"], "chosen": None}]:
        for n in NAMES:
            label = n if n != "model" or not r.get("chosen") else f"model ({r['chosen']})"
            lines.append(f"| {r['cutoff']} | {label} | "
                         + " | ".join(f"{r['metrics'][n][k]:.4f}" for k in METRICS) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workspace", required=True)
    ap.add_argument("--cutoffs", nargs="*", default=list(CUTOFFS))
    ap.add_argument("--tune", action="store_true")
    ap.add_argument("--n-trials", type=int, default=None)
    ap.add_argument("--set", nargs="*", default=[], help="ChurnModel parameters, name=value")
    ap.add_argument("--label", default="")
    args = ap.parse_args(argv)
    kwargs = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    result = run(args.workspace, args.cutoffs, args.tune, args.n_trials, kwargs or None)
    print(table(result))
    out = Path(__file__).parent / "results" / f"churn_cutoffs{'-' + args.label if args.label else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
