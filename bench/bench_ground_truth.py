"""Benchmark: do the trained models recover the synthetic shop's planted ground truth?

    python -m bench.bench_ground_truth                         # 5,000 customers, seeds 0 1 2
    python -m bench.bench_ground_truth --customers 2000 --seeds 0 --no-tune --no-write

For every seed, in one process and a temporary workspace: ``synthetic.generate`` + ``write`` (the
hidden truth goes to ``<workspace>/synthetic/``), the churn evaluation protocol of ``crmml evaluate
churn`` at the newest labelled cutoff (``training.churn.evaluate_protocol``: training strictly before
the cutoff, reasons as the API returns them), and ``Recommender().fit`` on every interaction of the
shop (the planted tastes do not change over time, so nothing needs holding out). Then:

* **churn, complaints**: among the customers whose planted driver is ``complaints`` and who lapse in
  the scoring window (``[cutoff, cutoff + horizon)``, churn label 1), the share whose top-3 reasons
  name the open-complaint feature (``complaints_unresolved``) and any complaint feature
  (``training.retention.COMPLAINT_FEATURES``); against (a) the same share for the customers who lapse
  in the window for another reason and (b) the *random-feature rate*: the chance that as many
  reasons, drawn at random among the model's features, would name one. Some complaint-driven lapses
  follow a complaint opened after the cutoff, which no model can see: the share with an open
  complaint at the cutoff is printed beside it, and the reason rate among those.
* **churn, membership** (members lapse half as often): the reasons API returns only risk-increasing
  reasons (positive contributions), so membership can show only as a *risk* reason of a non-member
  (``membership tier none``, ``0 loyalty points``); its protective effect for members is read from the
  contributions (the mean log-odds contribution of the membership features, and the share of members
  for whom it is negative).
* **recommender**: for a sample of customers, the share of the top-10 (``exclude_seen=False``: all
  items; ``True``: items new to the customer) that lie in the customer's planted (category, style)
  tastes, for the model and for popularity alone, against chance (the customer's share of the catalogue
  in those tastes); and the precision of recovering the top taste (the most frequent (category, style)
  of the top-10 equals the heaviest planted one), with the customer's own purchase history as the
  reference a perfect model of the past would reach.

Results go to ``bench/results/ground_truth.json`` and to ``BENCHMARKS.md`` (the section between the
``bench_ground_truth`` markers is replaced).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns (and slows down) without it

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_service import code_version, load_average, write_benchmarks  # noqa: E402

MARK_START = "<!-- bench_ground_truth:start -->"
MARK_END = "<!-- bench_ground_truth:end -->"
HORIZON = 90
K = 10


# ------------------------------------------------------------------------------------------ helpers
def item_tastes(items: pd.DataFrame) -> pd.DataFrame:
    """item_id, category, style: the style is the first word of an item's name (docs/synthetic.md)."""
    return pd.DataFrame({"item_id": items["item_id"].astype(str), "category": items["category"].astype(str),
                         "style": items["name"].astype(str).str.split(" ").str[0]})


def random_feature_rate(n_reasons: pd.Series, n_features: int, n_matching: int) -> float:
    """Mean chance that ``n_reasons`` features drawn at random among ``n_features`` include one of
    ``n_matching``: ``1 - C(F - m, r) / C(F, r)``."""
    if len(n_reasons) == 0 or n_features == 0:
        return float("nan")
    r = n_reasons.to_numpy()
    miss = np.array([math.comb(n_features - n_matching, int(x)) / math.comb(n_features, int(x)) for x in r])
    return float(np.mean(1.0 - miss))


def _names(reasons, features) -> bool:
    return any(r["feature"] in features for r in reasons)


def _rate(mask: pd.Series) -> float | None:
    return float(mask.mean()) if len(mask) else None


# ------------------------------------------------------------------------------------------ churn
def churn_truth(ev, ground_truth: pd.DataFrame) -> dict:
    """The planted churn drivers against the reasons of an ``evaluate_protocol`` result."""
    from features import catalog
    from training.retention import COMPLAINT_FEATURES

    model = ev.model
    features = list(model.feature_names_)
    complaint = set(COMPLAINT_FEATURES) & set(features)
    open_complaint = {"complaints_unresolved"} & set(features)
    membership = [f.name for f in catalog.FEATURES.values() if f.group == "membership" and f.name in features]

    gt = ground_truth.assign(customer_id=ground_truth["customer_id"].astype(str))
    s = ev.scored.assign(customer_id=ev.scored["customer_id"].astype(str))
    s = s.merge(gt[["customer_id", "lapse_at", "lapse_driver", "is_member"]], on="customer_id", how="left")
    x = ev.X_eval.assign(customer_id=ev.X_eval["customer_id"].astype(str)).set_index("customer_id")
    s["open_at_cutoff"] = (x["complaints_unresolved"].reindex(s["customer_id"]).fillna(0).to_numpy() > 0
                           if "complaints_unresolved" in x else False)
    s["n_reasons"] = s["reasons"].map(len)
    s["names_open"] = s["reasons"].map(lambda rs: _names(rs, open_complaint))
    s["names_complaint"] = s["reasons"].map(lambda rs: _names(rs, complaint))
    s["names_membership"] = s["reasons"].map(lambda rs: _names(rs, membership))
    end = ev.cutoff + pd.Timedelta(days=ev.horizon_days)
    in_window = (s["lapse_at"] >= ev.cutoff) & (s["lapse_at"] < end) & (s["churned"] == 1)
    drv = in_window & (s["lapse_driver"] == "complaints")
    other = in_window & s["lapse_driver"].isin(["baseline", "early"])
    before = (s["lapse_at"] < ev.cutoff) & (s["lapse_driver"] == "complaints") & (s["churned"] == 1)
    F = len(features)
    out = {
        "cutoff": str(ev.cutoff.date()), "horizon_days": ev.horizon_days, "scored": len(s),
        "auc": ev.metrics["model"]["auc"], "n_features": F, "complaint_features": sorted(complaint),
        "membership_features": membership,
        "complaints": {
            "n_driver_in_window": int(drv.sum()),
            "open_at_cutoff": _rate(s.loc[drv, "open_at_cutoff"]),
            "names_open": _rate(s.loc[drv, "names_open"]),
            "names_complaint": _rate(s.loc[drv, "names_complaint"]),
            "names_open_if_open_at_cutoff": _rate(s.loc[drv & s["open_at_cutoff"], "names_open"]),
            "names_complaint_if_open_at_cutoff": _rate(s.loc[drv & s["open_at_cutoff"], "names_complaint"]),
            "n_other_in_window": int(other.sum()),
            "other_names_open": _rate(s.loc[other, "names_open"]),
            "other_names_complaint": _rate(s.loc[other, "names_complaint"]),
            "random_open": random_feature_rate(s.loc[drv, "n_reasons"], F, len(open_complaint)),
            "random_complaint": random_feature_rate(s.loc[drv, "n_reasons"], F, len(complaint)),
            "n_driver_lapsed_before_cutoff": int(before.sum()),
            "before_open_at_cutoff": _rate(s.loc[before, "open_at_cutoff"]),
            "before_names_complaint": _rate(s.loc[before, "names_complaint"]),
        },
    }
    # membership: risk reasons of non-members; protective contributions of members
    member = s["is_member"].fillna(False).astype(bool)
    churn_w = s["churned"] == 1
    contrib = np.asarray(ev.contributions)[:, : len(features)]
    cols = [features.index(f) for f in membership]
    m_contrib = pd.Series(contrib[:, cols].sum(axis=1) if cols else np.zeros(len(s)))
    # ev.contributions is aligned with ev.X_eval; bring it to the rows of `scored`
    m_contrib.index = ev.X_eval["customer_id"].astype(str).to_numpy()
    m_contrib = m_contrib.reindex(s["customer_id"]).to_numpy()
    out["membership"] = {
        "n_members": int(member.sum()), "n_non_members": int((~member).sum()),
        "churn_rate_members": _rate(s.loc[member, "churned"]), "churn_rate_non_members": _rate(s.loc[~member, "churned"]),
        "non_member_churners_name_membership": _rate(s.loc[~member & churn_w, "names_membership"]),
        "member_churners_name_membership": _rate(s.loc[member & churn_w, "names_membership"]),
        "random_membership": random_feature_rate(s.loc[~member & churn_w, "n_reasons"], F, len(membership)),
        "mean_contribution_members": float(np.nanmean(m_contrib[member.to_numpy()])) if member.any() else None,
        "mean_contribution_non_members": float(np.nanmean(m_contrib[~member.to_numpy()])) if (~member).any() else None,
        "members_protective_share": float(np.mean(m_contrib[member.to_numpy()] < 0)) if member.any() else None,
        "non_members_risk_share": float(np.mean(m_contrib[~member.to_numpy()] > 0)) if (~member).any() else None,
    }
    return out


# ------------------------------------------------------------------------------------------ recommender
def _top_combo(recs: pd.DataFrame) -> pd.DataFrame:
    """Per user: the most frequent (category, style) of its list, ties to the better-ranked one."""
    g = recs.groupby(["user_id", "category", "style"], sort=False).agg(n=("rank", "size"), best=("rank", "min"))
    g = g.reset_index().sort_values(["user_id", "n", "best"], ascending=[True, False, True])
    return g.drop_duplicates("user_id")[["user_id", "category", "style"]]


def list_truth(recs: pd.DataFrame, tastes: pd.DataFrame, items: pd.DataFrame, users) -> dict:
    """Share of the top-k in the planted tastes (mean over users; a user with a short list counts its
    shorter list, one without any list counts 0) and top-taste precision."""
    users = pd.Index(pd.Series(users, dtype=str), name="user_id")
    r = recs.assign(user_id=recs["user_id"].astype(str), item_id=recs["item_id"].astype(str))
    r = r.merge(item_tastes(items), on="item_id", how="left")
    t = tastes.rename(columns={"customer_id": "user_id"}).assign(user_id=lambda d: d["user_id"].astype(str))
    liked = r.merge(t[["user_id", "category", "style"]].assign(liked=True), on=["user_id", "category", "style"],
                    how="left")["liked"].fillna(False).astype(bool)
    share = liked.groupby(r["user_id"].to_numpy()).mean().reindex(users, fill_value=0.0)
    top = t.sort_values(["user_id", "weight"], ascending=[True, False]).drop_duplicates("user_id")
    hit = _top_combo(r).merge(top, on=["user_id", "category", "style"], how="inner")["user_id"]
    # where the list comes from: each source's share of the rows and how often its items are liked
    by_source = {str(k): {"share": float(len(g) / len(r)), "in_tastes": float(liked[g.index].mean())}
                 for k, g in r.groupby("source")} if len(r) and "source" in r else {}
    return {"in_tastes": float(share.mean()), "top_taste_precision": float(users.isin(hit).mean()),
            "by_source": by_source,
            "n_users": len(users), "mean_list_length": float(r.groupby("user_id").size().reindex(users, fill_value=0).mean())}


def chance_in_tastes(tastes: pd.DataFrame, items: pd.DataFrame, users) -> float:
    """Mean over users of the catalogue share of their planted (category, style) tastes."""
    it = item_tastes(items)
    share = (it.groupby(["category", "style"]).size() / len(it)).rename("share").reset_index()
    t = tastes.assign(customer_id=tastes["customer_id"].astype(str)).merge(share, on=["category", "style"], how="left")
    per = t.groupby("customer_id")["share"].sum().reindex(pd.Index(pd.Series(users, dtype=str)), fill_value=0.0)
    return float(per.mean())


def history_truth(interactions: pd.DataFrame, tastes: pd.DataFrame, items: pd.DataFrame, users) -> dict:
    """The customers' own purchases as a reference: the share of their purchase lines in the planted
    tastes, and the top-taste precision of their most bought (category, style)."""
    users = pd.Index(pd.Series(users, dtype=str))
    p = interactions[interactions["weight"] >= 1.0] if "weight" in interactions else interactions
    p = p.assign(user_id=p["user_id"].astype(str), item_id=p["item_id"].astype(str))
    p = p[p["user_id"].isin(users)].merge(item_tastes(items), on="item_id")
    t = tastes.assign(user_id=tastes["customer_id"].astype(str))
    liked = p.merge(t[["user_id", "category", "style"]].assign(liked=True), on=["user_id", "category", "style"],
                    how="left")["liked"].fillna(False).astype(bool)
    in_tastes = liked.groupby(p["user_id"].to_numpy()).mean()
    counts = p.groupby(["user_id", "category", "style"]).size().rename("n").reset_index()
    best = counts.sort_values(["user_id", "n"], ascending=[True, False]).drop_duplicates("user_id")
    top = tastes.assign(user_id=tastes["customer_id"].astype(str)).sort_values(["user_id", "weight"], ascending=[True, False])
    top = top.drop_duplicates("user_id")
    hit = best.merge(top, on=["user_id", "category", "style"])["user_id"]
    return {"in_tastes": float(in_tastes.mean()), "top_taste_precision": float(users.isin(hit).mean())}


def recommender_truth(rec, interactions: pd.DataFrame, items: pd.DataFrame, tastes: pd.DataFrame,
                      favourites: pd.DataFrame, n_users: int, seed: int) -> dict:
    from training.candidates import OWN_ITEM_GENERATORS

    known = np.asarray(rec.state_.matrix.user_ids, dtype=str)
    rng = np.random.default_rng(seed)
    users = sorted(rng.choice(known, size=min(n_users, len(known)), replace=False).tolist())
    out: dict = {"n_users": len(users), "chance_in_tastes": chance_in_tastes(tastes, items, users),
                 "history": history_truth(interactions, tastes, items, users),
                 "n_combos": len(item_tastes(items).groupby(["category", "style"]))}
    fav = favourites.assign(user_id=favourites["customer_id"].astype(str), item_id=favourites["item_id"].astype(str))
    fav = fav[["user_id", "item_id"]].drop_duplicates()
    for mode, exclude in (("all", False), ("new", True)):
        model = rec.recommend(users, k=K, exclude_seen=exclude)
        pop = rec.recommend_baseline(users, "popular", k=K, exclude_seen=exclude)
        out[mode] = {"model": list_truth(model, tastes, items, users), "popular": list_truth(pop, tastes, items, users)}
        # every generator alone, as the model's own reference (popularity is one of them)
        out[mode]["generators"] = {
            g.name: list_truth(rec.recommend_baseline(users, g.name, k=K, exclude_seen=exclude), tastes, items, users)
            for g in rec.state_.generators if not (exclude and g.name in OWN_ITEM_GENERATORS)}
        if mode == "all":  # favourites, rebought again and again, belong in the list that allows them
            for name, r in (("model", model), ("popular", pop)):
                r = r.assign(user_id=r["user_id"].astype(str), item_id=r["item_id"].astype(str))
                got = r.merge(fav, on=["user_id", "item_id"]).groupby("user_id").size()
                n_fav = fav[fav["user_id"].isin(users)].groupby("user_id").size()
                out[mode][name]["favourites_recall"] = float((got.reindex(n_fav.index, fill_value=0) / n_fav).mean())
    return out


# ------------------------------------------------------------------------------------------ one shop
def run_shop(root: Path, customers: int, seed: int, tune: bool, rec_users: int, say=print) -> dict:
    from features import synthetic
    from features.dates import newest_labelled_cutoff, workspace_as_of
    from features.workspace import Workspace
    from training import churn
    from training.recommender import Recommender
    from training.recommender_inputs import load_inputs

    ws = Workspace(root / f"seed{seed}")
    cpu0, t0 = time.process_time(), time.perf_counter()
    synthetic.write(ws, synthetic.generate(n_customers=customers, seed=seed), seed=seed, n_customers=customers)
    gt = pd.read_parquet(synthetic.ground_truth_path(ws))
    tastes = pd.read_parquet(synthetic.tastes_path(ws))
    favourites = pd.read_parquet(synthetic.favourites_path(ws))
    res: dict = {"seed": seed, "customers": customers, "timings_cpu_s": {"generate": time.process_time() - cpu0}}

    cutoff = newest_labelled_cutoff(workspace_as_of(ws), HORIZON)
    say(f"seed {seed}: churn evaluation at {cutoff.date()} (tune={tune})")
    c1 = time.process_time()
    ev = churn.evaluate_protocol(ws, cutoff, horizon_days=HORIZON, tune=tune)
    res["churn"] = churn_truth(ev, gt)
    res["timings_cpu_s"]["churn"] = time.process_time() - c1
    del ev

    say(f"seed {seed}: recommender fit")
    c2 = time.process_time()
    interactions, items, users = load_inputs(ws)
    rec = Recommender().fit(interactions, items=items, users=users)
    res["recommender"] = recommender_truth(rec, interactions, items, tastes, favourites, rec_users, seed)
    res["timings_cpu_s"]["recommender"] = time.process_time() - c2
    res["timings_cpu_s"]["total"] = time.process_time() - cpu0
    res["wall_s"] = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------------------------------ report
def _mean(runs: list[dict], path: str) -> float | None:
    vals = []
    for r in runs:
        v = r
        for key in path.split("."):
            v = v.get(key) if isinstance(v, dict) else None
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            vals.append(float(v))
    return float(np.mean(vals)) if vals else None


def _cell(runs: list[dict], path: str, pct: bool = True) -> str:
    vals = []
    for r in runs:
        v = r
        for key in path.split("."):
            v = v.get(key) if isinstance(v, dict) else None
        vals.append(v)
    fmt = (lambda v: "-" if v is None else f"{100 * v:.0f}%") if pct else (lambda v: "-" if v is None else f"{v:.3f}")
    m = _mean(runs, path)
    return f"**{fmt(m)}** ({' / '.join(fmt(v) for v in vals)})" if len(runs) > 1 else fmt(m)


def _best_generator(runs: list[dict], mode: str) -> str:
    """The generator alone whose top-10 lies most in the planted tastes (mean over the seeds)."""
    scores: dict[str, list[float]] = {}
    for run in runs:
        for name, g in run["recommender"][mode].get("generators", {}).items():
            scores.setdefault(name, []).append(g["in_tastes"])
    if not scores:
        return "-"
    name, vals = max(scores.items(), key=lambda kv: np.mean(kv[1]))
    return f"{name} {100 * np.mean(vals):.0f}%"


def table(runs: list[dict]) -> list[str]:
    c, m, r = "churn.complaints.", "churn.membership.", "recommender."
    rows = [
        ("churn AUC at the cutoff (context)", _cell(runs, "churn.auc", pct=False), ""),
        ("complaint-driven lapses in the window: open complaint at the cutoff", _cell(runs, c + "open_at_cutoff"),
         "observable ceiling"),
        ("... top-3 reasons name `complaints_unresolved`", _cell(runs, c + "names_open"),
         f"random feature {_cell(runs, c + 'random_open')}; other lapses {_cell(runs, c + 'other_names_open')}"),
        ("... top-3 reasons name any complaint feature", _cell(runs, c + "names_complaint"),
         f"random feature {_cell(runs, c + 'random_complaint')}; other lapses {_cell(runs, c + 'other_names_complaint')}"),
        ("... among those with a complaint open at the cutoff: any complaint feature",
         _cell(runs, c + "names_complaint_if_open_at_cutoff"), ""),
        ("complaint-driven, already lapsed at the cutoff: any complaint feature",
         _cell(runs, c + "before_names_complaint"), f"open complaint at the cutoff {_cell(runs, c + 'before_open_at_cutoff')}"),
        ("non-member churners: top-3 reasons name membership (tier / points)",
         _cell(runs, m + "non_member_churners_name_membership"),
         f"random feature {_cell(runs, m + 'random_membership')}; member churners "
         f"{_cell(runs, m + 'member_churners_name_membership')}"),
        ("members: membership contribution < 0 (protective, log-odds)", _cell(runs, m + "members_protective_share"),
         f"non-members: > 0 (risk) {_cell(runs, m + 'non_members_risk_share')}; mean contribution members {_cell(runs, m + 'mean_contribution_members', pct=False)}, non-members "
         f"{_cell(runs, m + 'mean_contribution_non_members', pct=False)}"),
        ("churn rate members / non-members (label, context)", _cell(runs, m + "churn_rate_members"),
         _cell(runs, m + "churn_rate_non_members")),
    ]
    for mode, what in (("all", "all items"), ("new", "new items only")):
        rows.append((f"top-10 ({what}) in the planted tastes: model", _cell(runs, f"{r}{mode}.model.in_tastes"),
                     f"popularity {_cell(runs, f'{r}{mode}.popular.in_tastes')}; chance (catalogue share) "
                     f"{_cell(runs, r + 'chance_in_tastes')}; own purchases {_cell(runs, r + 'history.in_tastes')}"))
        rows.append((f"... the best generator alone ({what})", _best_generator(runs, mode),
                     "the model's generators, each alone: the one most in the tastes (mean over the seeds)"))
        rows.append((f"top taste recovered from the top-10 ({what}): model",
                     _cell(runs, f"{r}{mode}.model.top_taste_precision"),
                     f"popularity {_cell(runs, f'{r}{mode}.popular.top_taste_precision')}; own purchase history "
                     f"{_cell(runs, r + 'history.top_taste_precision')}"))
    rows.append(("favourite items in the top-10 (all items): model", _cell(runs, r + "all.model.favourites_recall"),
                 f"popularity {_cell(runs, r + 'all.popular.favourites_recall')}"))
    lines = ["| measure | result | reference |", "|---|---:|---|"]
    lines += [f"| {a} | {b} | {c_} |" for a, b, c_ in rows]
    return lines


def reading(runs: list[dict]) -> str:
    """The table in sentences (means over the seeds)."""
    def pct(path: str) -> str:
        v = _mean(runs, path)
        return "-" if v is None else f"{100 * v:.0f}%"

    c, m, r = "churn.complaints.", "churn.membership.", "recommender."
    return (
        f"Reading (means over the seeds): {pct(c + 'open_at_cutoff')} of the complaint-driven lapses in the window "
        f"had a complaint open at the cutoff, and {pct(c + 'names_complaint_if_open_at_cutoff')} of those get a "
        f"complaint reason ({pct(c + 'names_open')} of all of them, against {pct(c + 'random_open')} for a random "
        f"feature): the rest lapsed after a complaint opened later, which the cutoff cannot see. Membership is "
        f"protective for {pct(m + 'members_protective_share')} of the members and a risk reason of "
        f"{pct(m + 'non_member_churners_name_membership')} of the non-member churners (random "
        f"{pct(m + 'random_membership')}): a weaker planted effect (hazard x 0.5) than recency's. The model's top-10 "
        f"lies {pct(r + 'all.model.in_tastes')} in the planted tastes (the customers' own purchases "
        f"{pct(r + 'history.in_tastes')}, chance {pct(r + 'chance_in_tastes')}, popularity "
        f"{pct(r + 'all.popular.in_tastes')}); on new items {pct(r + 'new.model.in_tastes')}, below the best of its "
        f"generators alone ({_best_generator(runs, 'new')}): the blend chosen for nDCG on the next purchases mixes in "
        f"co-purchase neighbours outside the tastes (`by_source` in the JSON)."
    )


def markdown(res: dict) -> str:
    runs = res["runs"]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    cpu = " / ".join(f"{r['timings_cpu_s']['total']:.0f}" for r in runs)
    lines = [
        MARK_START,
        "## Synthetic ground truth recovered: churn reasons and recommended tastes (bench/bench_ground_truth.py)",
        "",
        f"`{res['command']}`. Date {res['date']}; machine: {res['machine']}; code {res['code']}; load average "
        f"before -> after: {res['load_before']} -> {res['load_after']}. Shops of {runs[0]['customers']:,} customers, "
        f"seeds {seeds} (CPU s per seed: {cpu}; peak RSS {res.get('peak_rss_mib', 0):,.0f} MiB); churn: `evaluate_protocol` at the newest labelled cutoff "
        f"(horizon {HORIZON} days, tune={res['tune']}), reasons as the API returns them (top 3, risk-increasing only); "
        f"recommender: `Recommender().fit` on all interactions, {runs[0]['recommender']['n_users']:,} sampled customers, "
        "k=10. Mean in bold, then each seed. The figures measure quality, not speed: the load does not change them.",
        "",
        *table(runs),
        "",
        reading(runs),
        "",
        "The reasons API names only risk-increasing features (positive contributions), so membership shows as a risk "
        "reason of a non-member (`membership tier none`, `0 loyalty points`), never as a protective reason of a "
        "member; the members' side is read from the contributions. Complaint-driven lapses whose complaint was "
        "opened after the cutoff are invisible at the cutoff: the first churn row is the ceiling for the next two.",
        "",
        MARK_END,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-tune", dest="tune", action="store_false",
                    help="train the churn model without its search (default: tuned, as `crmml evaluate churn`)")
    ap.add_argument("--rec-users", type=int, default=2000, help="customers whose recommendations are checked")
    ap.add_argument("--workdir", help="where the temporary workspaces go (default: a fresh temp dir)")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--output", default=str(REPO / "bench" / "results" / "ground_truth.json"))
    args = ap.parse_args(argv)

    res: dict = {"date": time.strftime("%Y-%m-%d"), "code": code_version(), "load_before": load_average(),
                 "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}",
                 "command": "python -m bench.bench_ground_truth " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "tune": args.tune, "runs": []}
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="ground_truth-") as tmp:
        for seed in args.seeds:
            run = run_shop(Path(tmp), args.customers, seed, args.tune, args.rec_users,
                           say=lambda msg: print(msg, flush=True))
            res["runs"].append(run)
            print(f"seed {seed}: {run['timings_cpu_s']['total']:.0f} CPU s, {run['wall_s']:.0f} s wall", flush=True)
            print("\n".join(table([run])), flush=True)
    res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res["load_after"] = load_average()
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    section = markdown(res)
    print(section)
    if not args.no_write:
        write_benchmarks(section, marks=(MARK_START, MARK_END))
    return res


if __name__ == "__main__":
    main()
