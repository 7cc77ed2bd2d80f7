"""Campaign effects and uplift targeting on synthetic shops with planted effects (BENCHMARKS.md).

    python bench/bench_campaigns.py [--customers 20000] [--experiments 8] [--seeds 0 1 2]

Per seed: a synthetic shop with randomised campaigns; every campaign's retention effect (Lin-adjusted,
95% interval) against its planted effect (campaign_truth: both potential outcomes); the uplift model
(trained without the held-out campaigns) against "highest churn risk" and "random": incremental
retention of the top 20% against the truth, AUUC observed and against the truth. Prints one JSON line
per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pandas as pd  # noqa: E402

from features import synthetic  # noqa: E402
from features.workspace import Workspace  # noqa: E402
from training import campaigns as cmp  # noqa: E402
from training import uplift as up  # noqa: E402
from training import uplift_training as ut  # noqa: E402


def run(n: int, experiments: int, seed: int, root: Path) -> dict:
    started = time.perf_counter()
    ws = Workspace(root / f"shop_{seed}")
    synthetic.write(ws, synthetic.generate(n_customers=n, seed=seed, experiments=experiments, progress=False), seed, n)
    truth = pd.read_parquet(synthetic.campaign_truth_path(ws))
    planted = (truth["y1"] - truth["y0"]).groupby(truth["campaign_id"]).mean()
    effects = cmp.evaluate_campaigns(ws, sorted(planted.index))
    covered = {e.campaign_id: bool(e.metrics["retained"]["ci_low"] <= planted[e.campaign_id]
                                   <= e.metrics["retained"]["ci_high"]) for e in effects}
    frame = ut.campaign_dataset(ws)
    holdout = ut.holdout_campaigns(frame)
    train, test = frame[~frame["campaign_id"].isin(holdout)], frame[frame["campaign_id"].isin(holdout)]
    model = up.UpliftModel().fit(train, train["retained"], train["treated"], train["action"])
    m = ut.summary_metrics(ut.evaluate_holdout(model, test))
    return {
        "seed": seed, "customers": n, "experiments": experiments,
        "effects": {e.campaign_id: {"action": e.action, "planted": round(float(planted[e.campaign_id]), 4),
                                    "estimate": round(e.metrics["retained"]["effect"], 4),
                                    "ci": [round(e.metrics["retained"]["ci_low"], 4),
                                           round(e.metrics["retained"]["ci_high"], 4)]} for e in effects},
        "covered": f"{sum(covered.values())}/{len(covered)}",
        "holdout": holdout,
        "gain_ratio_vs_churn_risk": round(m["true_gain_top20"] / m["true_gain_top20_churn_risk"], 2),
        "metrics": {k: round(v, 4) for k, v in m.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=20000)
    ap.add_argument("--experiments", type=int, default=8)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            print(json.dumps(run(args.customers, args.experiments, seed, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
