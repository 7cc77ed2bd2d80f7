"""Benchmark: the recommender against each of its generators alone at several cutoffs of the UCI data,
a ratings-like table (one row per customer-item pair, no time, random split) against a tuned EASE,
and the fit time on a large synthetic catalogue.

    python -m bench.bench_rec_cutoffs --workspace /tmp/uci            # the four quarterly cutoffs
    python -m bench.bench_rec_cutoffs --workspace /tmp/uci --ratings  # + the ratings-like table
    python -m bench.bench_rec_cutoffs --no-cutoffs --scale           # 25,000 items x 30,000 customers
    python -m bench.bench_rec_cutoffs --workspace /tmp/uci --ceiling --cutoffs 2010-12-11  # oracle upper bounds

At each cutoff: ``training.recommender.evaluate_time_split`` (fit before the cutoff, test on the next
90 days; nDCG@10 over all purchases and over items new to the customer), the model beside every
generator alone, and the selection the model made (``Recommender.selection_``). Results go to
``--output`` (JSON) and are printed as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CUTOFFS = ("2010-12-11", "2011-03-12", "2011-06-11", "2011-09-10")


def cutoffs_run(interactions, items, users, cutoffs, params: dict) -> list[dict]:
    from training.recommender import evaluate_time_split

    out = []
    for c in cutoffs:
        started = time.perf_counter()
        ev = evaluate_time_split(interactions, c, window_days=90, k=10, items=items, users=users, params=params)
        row = {"cutoff": c, "seconds": round(time.perf_counter() - started, 1), "fit_seconds": ev.get("fit_seconds"), "fit_cpu": ev.get("fit_cpu"),
               "n_users": ev["n_users"], "n_users_new": ev["n_users_new"],
               "all": {k: v["ndcg@10"] for k, v in ev["all"].items()},
               "new": {k: v["ndcg@10"] for k, v in ev["new"].items()},
               "selection": ev.get("selection")}
        out.append(row)
        print(json.dumps(row, default=str), flush=True)
    return out


def ceiling_run(interactions, items, users, cutoff, params: dict, window_days: float = 90.0) -> dict:
    """Upper bounds of the model at one cutoff, on the test window itself (oracles: they see the test labels).

    The model is fitted before ``cutoff`` as in the evaluation; the test users' candidates and
    features are built from that fit and labelled with the test window (``all`` view). The test users
    are split 50/50 by a hash of their id; on the second half (the check) are compared: the model's
    own re-ranker, the best single generator, the best blend of generators with its weights searched
    on the check half itself, a LambdaRank ranker trained on the first half's *test* labels (the same
    features and settings: what the ranker could do without the shift between the inner window and
    the test window), and the perfect order of the candidates (the recall ceiling of the candidates).
    nDCG@10 counts every relevant item (candidates or not) and is averaged over all check users
    (users whose candidates hold nothing relevant score 0)."""
    import zlib

    from features.interactions import holdout_truth, normalize_interactions, time_split
    from training.recommender import Recommender, _Pack, _split_ndcg, search_blend

    df = normalize_interactions(interactions)
    train, test = time_split(df, cutoff, window_days)
    test = test[test["weight"] > 0]
    model = Recommender(**{**params, "rank_max_users": None}).fit(train, items=items, users=users)
    truth_all, _ = holdout_truth(train, test)
    n_users = truth_all["user_id"].nunique()
    check_users = {u for u in truth_all["user_id"].unique() if zlib.crc32(u.encode()) % 2 == 1}
    rows = model._training_rows(model.state_, train, test)["all"]
    fit_rows = [r for r in rows if r.user not in check_users]
    check_rows = [r for r in rows if r.user in check_users]
    scale = len(check_rows) / max(len(check_users), 1)  # users without a relevant candidate score 0
    names = list(model.generators)
    pack = _Pack.of(check_rows, len(names), sample=False)
    alone = {n: float(pack.ndcg(np.eye(len(names))[g])) * scale for g, n in enumerate(names)}
    blend = float(pack.ndcg(search_blend(pack, np.ones(len(names), dtype=bool)))) * scale
    x = np.vstack([r.x for r in check_rows])

    def ranked(boosters) -> float:
        s = sum(b.predict(x) for b in boosters)
        return float(np.sum(_split_ndcg(s, check_rows))) / max(len(check_users), 1)

    oracle_boosters, _ = model._fit_ranker(fit_rows)
    perfect = float(np.sum(_split_ndcg(np.concatenate([r.y for r in check_rows]).astype(float), check_rows)))
    best = max(alone, key=alone.get)
    res = {"cutoff": str(cutoff), "test_users": int(n_users), "check_users": len(check_users),
           "check_users_with_a_relevant_candidate": len(check_rows),
           "model_ranker": ranked(model.rankers_["all"]) if "all" in model.rankers_ else None,
           "best_generator": [best, alone[best]], "oracle_blend": blend,
           "ranker_trained_on_test_labels": ranked(oracle_boosters),
           "perfect_order_of_candidates": perfect / max(len(check_users), 1), "generators_alone": alone}
    print(json.dumps(res, default=str), flush=True)
    return res


def ratings_table(interactions: pd.DataFrame) -> pd.DataFrame:
    """A ratings-like table from purchase lines: one row per customer-item pair, weight 1, no time,
    no orders (no repeats, no baskets)."""
    pairs = interactions[["user_id", "item_id"]].astype(str).drop_duplicates()
    return pairs.assign(weight=1.0).reset_index(drop=True)


def ratings_run(interactions: pd.DataFrame, params: dict, seed: int = 0) -> dict:
    """Random per-user split (20% of each user's items) of the ratings-like table; model (exclude seen)
    against EASE alone at each l2 of a grid, the best l2 chosen on the test itself (an upper bound of
    a tuned EASE), and popularity."""
    from features.interactions import holdout_truth, random_split
    from training.rec_metrics import ranking_metrics
    from training.recommender import Recommender

    table = ratings_table(interactions)
    train, test = random_split(table, test_fraction=0.2, seed=seed)
    _, truth = holdout_truth(train, test)
    users = truth["user_id"].unique()
    started, cpu = time.perf_counter(), time.process_time()
    model = Recommender(**params).fit(train)
    fit_s, fit_cpu = time.perf_counter() - started, time.process_time() - cpu
    res = {"rows": int(len(table)), "users": int(len(users)), "fit_seconds": round(fit_s, 1),
           "fit_cpu_seconds": round(fit_cpu, 1),
           "model": ranking_metrics(truth, model.recommend(users, k=10, exclude_seen=True), k=10)["ndcg@10"],
           "popularity": ranking_metrics(truth, model.recommend_baseline(users, "popular", 10, True), k=10)["ndcg@10"],
           "selection": getattr(model, "selection_", None)}
    for l2 in (50.0, 200.0, 500.0, 2000.0):
        ease = Recommender(**{**params, "generators": ("ease",), "ease_l2": l2, "use_ranker": False}).fit(train)
        res[f"ease_l2_{l2:g}"] = ranking_metrics(truth, ease.recommend_baseline(users, "ease", 10, True), k=10)["ndcg@10"]
    res["ease_tuned"] = max(v for k, v in res.items() if k.startswith("ease_l2_"))
    print(json.dumps(res, default=str), flush=True)
    return res


def synthetic_large(n_users: int = 30_000, n_items: int = 25_000, per_user: int = 25, seed: int = 0) -> pd.DataFrame:
    """Purchases of ``n_users`` customers over ``n_items`` items: Zipf-like popularity, 50 taste
    clusters, orders over two years (about ``per_user`` lines per customer)."""
    rng = np.random.default_rng(seed)
    n_clusters = 50
    cluster_of_item = rng.integers(0, n_clusters, n_items)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.9
    rng.shuffle(pop)
    members = [np.flatnonzero(cluster_of_item == c) for c in range(n_clusters)]
    probs = [pop[m] / pop[m].sum() for m in members]
    all_p = pop / pop.sum()
    n_lines = rng.poisson(per_user, n_users) + 1
    user_cluster = rng.integers(0, n_clusters, n_users)
    users = np.repeat(np.arange(n_users), n_lines)
    taste = rng.random(len(users)) < 0.6
    items = rng.choice(n_items, size=len(users), p=all_p)
    for c in range(n_clusters):
        sel = taste & (user_cluster[users] == c)
        items[sel] = rng.choice(members[c], size=int(sel.sum()), p=probs[c])
    start = pd.Timestamp("2022-01-01")
    days = rng.random(len(users)) * 730
    orders = users * 100 + (days // 30).astype(np.int64)
    return pd.DataFrame({"user_id": users.astype(str), "item_id": items.astype(str),
                         "timestamp": start + pd.to_timedelta(days, unit="D"), "order_id": orders.astype(str),
                         "weight": 1.0})


def scale_run(params: dict) -> dict:
    from training.recommender import Recommender

    df = synthetic_large()
    started, cpu = time.perf_counter(), time.process_time()
    model = Recommender(**params).fit(df)
    res = {"lines": int(len(df)), "customers": int(df["user_id"].nunique()), "items": int(df["item_id"].nunique()),
           "fit_seconds": round(time.perf_counter() - started, 1), "fit_cpu_seconds": round(time.process_time() - cpu, 1),
           "load_average": os.getloadavg(), "fit_cpu_by_phase": model.fit_cpu_,
           "selection": getattr(model, "selection_", None)}
    print(json.dumps(res, default=str), flush=True)
    return res


def markdown(rows: list[dict]) -> str:
    lines = ["| cutoff | model all | best generator all | ratio | model new | popularity new | best generator new | fit s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        gens = {k: v for k, v in r["all"].items() if k != "model"}
        best = max(gens, key=gens.get)
        gnew = {k: v for k, v in r["new"].items() if k != "model"}
        bnew = max(gnew, key=gnew.get)
        lines.append(f"| {r['cutoff']} | {r['all']['model']:.4f} | {best} {gens[best]:.4f} | "
                     f"{r['all']['model'] / max(gens[best], 1e-9):.2f}x | {r['new']['model']:.4f} | "
                     f"{r['new'].get('popularity', float('nan')):.4f} | {bnew} {gnew[bnew]:.4f} | {r['fit_seconds']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", help="workspace with the ingested UCI data (default: ingest into /tmp)")
    ap.add_argument("--cutoffs", default=",".join(CUTOFFS))
    ap.add_argument("--no-cutoffs", action="store_true")
    ap.add_argument("--ratings", action="store_true", help="also the ratings-like table against a tuned EASE")
    ap.add_argument("--scale", action="store_true", help="also the fit time on 25,000 items x 30,000 customers")
    ap.add_argument("--ceiling", action="store_true", help="instead of the evaluation: oracle upper bounds at each cutoff")
    ap.add_argument("--params", default="{}", help="Recommender parameters as JSON")
    ap.add_argument("--output", default=str(REPO / "bench" / "results" / "rec_cutoffs.json"))
    args = ap.parse_args(argv)
    params = {"show_progress": False, **json.loads(args.params)}
    res: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "params": params}
    if not args.no_cutoffs or args.ratings:
        from bench.bench_features import real_workspace
        from training.recommender_inputs import load_inputs

        interactions, items, users = load_inputs(real_workspace(args.workspace))
        if args.ceiling:
            res["ceiling"] = [ceiling_run(interactions, items, users, c, params) for c in args.cutoffs.split(",")]
        elif not args.no_cutoffs:
            res["cutoffs"] = cutoffs_run(interactions, items, users, args.cutoffs.split(","), params)
            print(markdown(res["cutoffs"]))
        if args.ratings:
            res["ratings"] = ratings_run(interactions, params)
    if args.scale:
        res["scale"] = scale_run(params)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    return res


if __name__ == "__main__":
    main()
