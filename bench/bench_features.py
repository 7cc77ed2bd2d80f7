"""Benchmark: the feature build (Ibis on DuckDB, one pass over all cutoffs) against a pandas implementation.

``pandas_snapshots`` is a straightforward pandas implementation of the same features and labels
(the orders, return documents, purchase days, first items, category days and view days are reduced
once, then every cutoff filters and groups them): the usual way to write it with pandas, not a
straw man. The benchmark checks that both give the same table before it reports times.

Each implementation runs in its own process, so that peak memory (max RSS, from ``getrusage``) is its
own: time and memory are end to end, from the workspace Parquet files to the feature DataFrame. Each
implementation runs ``--repeat`` times (default 3), in rounds, and the run with the median wall time
is reported (all runs are in the JSON): one run on a shared machine can be off by 15%.

    python -m bench.bench_features                     # real data (24 monthly cutoffs) + synthetic 10M events
    python -m bench.bench_features --synthetic-events 2000000 --skip-real
    python -m bench.bench_features --real-workspace /tmp/wsr --spark
    python -m bench.bench_features --real-workspace /tmp/wsuci --synthetic-workspace /tmp/crmml-bench-syn-85470-0

Results are printed as a table and written to ``bench/results/features.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from features import catalog  # noqa: E402
from features.workspace import Workspace  # noqa: E402

EPOCH = pd.Timestamp("1970-01-01")
SHARED = REPO.parent / "shared" / "data"
REAL_FILES = [
    SHARED / "online_retail_ii" / "online_retail_ii_year_2009_2010.csv.gz",
    SHARED / "online_retail" / "online_retail.csv.gz",
]
EVENTS_PER_CUSTOMER = 117  # about what features.synthetic generates per customer (views, carts, purchases, returns)


# ------------------------------------------------------------------------------------------- pandas
def _days(ts: pd.Series) -> pd.Series:
    """Float days since 1970-01-01, whole seconds (as the engines' epoch_seconds)."""
    secs = ts.astype("datetime64[us]").astype("int64") // 1_000_000
    return pd.Series(secs.astype("float64") / 86400.0, index=ts.index).where(ts.notna())


def pandas_snapshots(tables: dict, cutoffs: list, horizon_days: int = 90, eligibility_days: int = 365,
                     include_ineligible: bool = False, reduce_once: bool = False) -> pd.DataFrame:
    """The snapshot table of ``features.snapshots.build_snapshots``, written with pandas.

    By default each cutoff is computed from the events before it, the straightforward way (one
    pass over the data per cutoff). ``reduce_once=True`` is the better pandas: the events are
    reduced once to orders, days and so on, and each cutoff filters those smaller tables.
    """
    h, el = float(horizon_days), float(eligibility_days)
    raw = tables["events"]
    max_day = _days(raw["timestamp"]).max()
    has_views = (raw["event_type"] == "view").any()
    has_carts = (raw["event_type"] == "cart").any()
    ev = raw[raw["customer_id"].notna() & raw["timestamp"].notna()].copy()
    ev["t"] = _days(ev["timestamp"])
    ev["day"] = np.floor(ev["t"])
    secs = (ev["timestamp"].astype("datetime64[us]").astype("int64") // 1_000_000).astype(str)
    ev["okey"] = ev["order_id"].astype(object).where(ev["order_id"].notna(), ev["customer_id"].astype(str) + "@" + secs)
    cid = "customer_id"

    items = None
    if "items" in tables:
        items = tables["items"][["item_id", "category"]]
        items = items[items["category"].notna()]

    def reduce(e: pd.DataFrame) -> dict:
        """Orders, return documents, purchase days with gaps, first items, category days, view days."""
        p = e[e["event_type"] == "purchase"]
        orders = _order_agg(p)
        pdays = orders[[cid, "day"]].drop_duplicates().sort_values([cid, "day"])
        pdays["gap"] = pdays.groupby(cid)["day"].diff()
        out = {
            "orders": orders,
            "returns": _order_agg(e[e["event_type"] == "return"]),
            "pdays": pdays,
            "first_item": p[p["item_id"].notna()].groupby([cid, "item_id"], sort=False)["t"].min().reset_index(),
            "cat_day": None,
            "vday": None,
        }
        if items is not None:
            pc = p.merge(items, on="item_id", how="inner")
            out["cat_day"] = (pc.groupby([cid, "category", "day"], sort=False)["amount"].sum(min_count=1)
                              .rename("spend").reset_index())
        if has_views or has_carts:
            vc = e[e["event_type"].isin(["view", "cart"])]
            out["vday"] = vc.groupby([cid, "event_type", "day"], sort=False).agg(
                n=("t", "size"), last=("t", "max"), first=("t", "min")).reset_index()
        return out

    if reduce_once:
        reduced = reduce(ev)
    tk = cm = cu = None
    if "tickets" in tables:
        tk = tables["tickets"]
        tk = tk[tk[cid].notna() & tk["opened_at"].notna()].copy()
        tk["to"], tk["tr"] = _days(tk["opened_at"]), _days(tk["resolved_at"])
        tk["is_c"] = (tk["kind"] == "complaint").fillna(False).astype(bool)
    if "campaigns" in tables:
        cm = tables["campaigns"]
        cm = cm[cm[cid].notna() & cm["sent_at"].notna()].copy()
        cm["ts"], cm["tr"] = _days(cm["sent_at"]), _days(cm["responded_at"])
    if "customers" in tables:
        cu = tables["customers"].copy()
        cu["fs"] = _days(cu["first_seen"])
        cu = cu.set_index(cid)

    purchase_times = ev.loc[ev["event_type"] == "purchase", [cid, "t"]]
    frames = []
    for cutoff in sorted({pd.Timestamp(c).normalize() for c in cutoffs}):
        c = float((cutoff - EPOCH) // pd.Timedelta(days=1))
        if not reduce_once:  # the straightforward way: everything from the events before the cutoff
            reduced = reduce(ev[ev["t"] < c])
        orders, returns, pdays = reduced["orders"], reduced["returns"], reduced["pdays"]
        first_item, cat_day, vday = reduced["first_item"], reduced["cat_day"], reduced["vday"]
        o = orders[orders["t"] < c].copy()
        since = c - o["t"]
        o["n_prev90"] = ((since > 90) & (since <= 180)).astype("int64")
        o["spend_prev90"] = o["amount"].where((since > 90) & (since <= 180), 0.0)
        o["n_last_year"] = ((since > 275) & (since <= 365)).astype("int64")
        o["n_elig"] = (since <= el).astype("int64")
        o["lines_90"] = o["lines"].where(since <= 90, 0)
        o["spend_365_gross"] = o["amount"].where(since <= 365, 0.0)
        spec = {"last_t": ("t", "max"), "first_t": ("t", "min"), "n_orders": ("t", "size"),
                "amount_sum": ("amount", "sum"), "units_sum": ("units", "sum"), "lines_sum": ("lines", "sum"),
                "n_prev90": ("n_prev90", "sum"), "spend_prev90": ("spend_prev90", "sum"),
                "n_last_year": ("n_last_year", "sum"), "n_elig": ("n_elig", "sum"), "lines_90": ("lines_90", "sum")}
        for w in catalog.WINDOWS:
            o[f"n_{w}"] = (since <= w).astype("int64")
            o[f"s_{w}"] = o["amount"].where(since <= w, 0.0)
            spec[f"n_{w}"] = (f"n_{w}", "sum")
            spec[f"s_{w}"] = (f"s_{w}", "sum")
        a = o.groupby(cid, sort=False).agg(**spec)
        nulls = o.groupby(cid, sort=False)[["amount", "units"]].count()  # SQL sum of only NULLs is NULL
        a.loc[nulls["amount"] == 0, "amount_sum"] = np.nan
        a.loc[nulls["units"] == 0, "units_sum"] = np.nan

        pt = purchase_times["t"]
        future = purchase_times.loc[(pt >= c) & (pt < c + h), cid].unique()
        rr = returns[returns["t"] < c].copy()
        rr["ret_90"] = rr["lines"].where(c - rr["t"] <= 90, 0)
        ra = rr.groupby(cid, sort=False).agg(ret_lines=("lines", "sum"), ret_amount=("amount", "sum"),
                                             ret_docs=("t", "size"), ret_90=("ret_90", "sum"),
                                             ret_first_t=("t", "min"))
        dd = pdays[pdays["day"] < c]
        da = dd.groupby(cid, sort=False).agg(n_days=("day", "size"), gap_n=("gap", "count"),
                                             gap_sum=("gap", "sum"))
        da["gap_sq"] = (dd["gap"] ** 2).groupby(dd[cid], sort=False).sum()
        ia = first_item[first_item["t"] < c].groupby(cid, sort=False).size().rename("distinct_items")

        if include_ineligible:
            keys = set(a.index) | set(ra.index)
        else:
            keys = set(a.index[a["n_elig"] > 0])
        va = None
        if vday is not None:
            vd = vday[vday["day"] < c]
            vs = c - vd["day"]
            is_v, is_k = vd["event_type"] == "view", vd["event_type"] == "cart"
            va = pd.DataFrame({
                "v_30": vd["n"].where(is_v & (vs <= 30), 0), "v_90": vd["n"].where(is_v & (vs <= 90), 0),
                "k_90": vd["n"].where(is_k & (vs <= 90), 0), "v_last": vd["last"].where(is_v),
                "v_first": vd["first"], cid: vd[cid],
            }).groupby(cid, sort=False).agg(v_30=("v_30", "sum"), v_90=("v_90", "sum"), k_90=("k_90", "sum"),
                                            v_last=("v_last", "max"), v_first=("v_first", "min"))
            if include_ineligible:
                keys |= set(va.index)
        if include_ineligible and cu is not None:
            keys |= set(cu.index[cu["fs"] < c])
        idx = pd.Index(sorted(keys), name=cid)
        df = pd.DataFrame(index=idx)
        df = df.join(a).join(ra).join(da).join(ia)
        df["future"] = idx.isin(future)

        f = {}
        freq = df["n_orders"].fillna(0.0)
        recency = c - df["last_t"]
        firsts = [df["first_t"], df["ret_first_t"]]
        if va is not None:
            firsts.append(va["v_first"].reindex(idx))
        if cu is not None:
            fs = cu["fs"].reindex(idx)
            firsts.append(fs.where(fs < c))
        first_seen = firsts[0]
        for s in firsts[1:]:
            first_seen = np.fmin(first_seen, s)
        gap_mean = df["gap_sum"] / df["gap_n"].replace(0, np.nan)
        var = (df["gap_sq"] - df["gap_sum"] ** 2 / df["gap_n"].replace(0, np.nan)) / (df["gap_n"] - 1).replace(0, np.nan)
        f["recency_days"] = recency
        f["frequency"] = freq
        f["monetary"] = df["amount_sum"].fillna(0.0).where(freq > 0, 0.0)
        f["avg_order_value"] = df["amount_sum"] / df["n_orders"]
        f["tenure_days"] = c - first_seen
        f["purchase_days"] = df["n_days"].fillna(0.0)
        for w in catalog.WINDOWS:
            f[f"orders_{w}d"] = df[f"n_{w}"].fillna(0.0)
        for w in catalog.WINDOWS:
            f[f"spend_{w}d"] = df[f"s_{w}"].fillna(0.0)
        f["orders_trend_90d"] = df["n_90"] / df["n_prev90"].replace(0, np.nan)
        f["spend_trend_90d"] = df["s_90"] / df["spend_prev90"].replace(0, np.nan)
        f["gap_mean_days"] = gap_mean
        f["gap_std_days"] = np.sqrt(var.clip(lower=0)).where(df["gap_n"] >= 2)
        f["recency_gap_ratio"] = recency / gap_mean.replace(0, np.nan)
        f["basket_size"] = df["units_sum"] / df["n_orders"]
        f["basket_lines"] = df["lines_sum"] / df["n_orders"]
        f["distinct_items"] = df["distinct_items"].fillna(0.0)
        if cat_day is not None:
            cd = cat_day[cat_day["day"] < c]
            cat = cd.groupby([cid, "category"], sort=False)["spend"].sum(min_count=1)
            g = cat.groupby(level=0, sort=False)
            f["distinct_categories"] = g.size().reindex(idx).fillna(0.0)
            f["top_category_share"] = g.max().reindex(idx) / g.sum().reindex(idx).replace(0, np.nan)
        else:
            f["distinct_categories"] = f["top_category_share"] = np.nan
        f["return_rate"] = df["ret_lines"].fillna(0.0) / df["lines_sum"].replace(0, np.nan)
        f["return_amount_rate"] = df["ret_amount"].fillna(0.0) / df["amount_sum"].replace(0, np.nan)
        f["cancellation_rate"] = df["ret_docs"].fillna(0.0) / df["n_orders"].replace(0, np.nan)
        f["returns_90d"] = df["ret_90"].fillna(0.0)
        if tk is not None:
            t = tk[tk["to"] < c]
            ts_ = c - t["to"]
            rated = t["satisfaction"].notna() & (t["tr"] < c) & (c - t["tr"] <= 365)
            ta = pd.DataFrame({
                cid: t[cid], "t_365": ts_ <= 365, "c_90": t["is_c"] & (ts_ <= 90), "c_365": t["is_c"] & (ts_ <= 365),
                "c_open": t["is_c"] & (t["tr"].isna() | (t["tr"] >= c)), "c_last": t["to"].where(t["is_c"]),
                "sat_sum": t["satisfaction"].where(rated, 0.0), "sat_n": rated,
            }).groupby(cid, sort=False).agg(t_365=("t_365", "sum"), c_90=("c_90", "sum"), c_365=("c_365", "sum"),
                                            c_open=("c_open", "sum"), c_last=("c_last", "max"),
                                            sat_sum=("sat_sum", "sum"), sat_n=("sat_n", "sum")).reindex(idx)
            f["tickets_365d"] = ta["t_365"].fillna(0.0)
            f["complaints_90d"] = ta["c_90"].fillna(0.0)
            f["complaints_365d"] = ta["c_365"].fillna(0.0)
            f["complaints_unresolved"] = ta["c_open"].fillna(0.0)
            f["days_since_complaint"] = c - ta["c_last"]
            f["satisfaction_mean"] = ta["sat_sum"] / ta["sat_n"].replace(0, np.nan)
        else:
            for k in ("tickets_365d", "complaints_90d", "complaints_365d", "complaints_unresolved",
                      "days_since_complaint", "satisfaction_mean"):
                f[k] = np.nan
        if cm is not None:
            m = cm[cm["ts"] < c]
            ms = c - m["ts"]
            ma = pd.DataFrame({cid: m[cid], "m_90": ms <= 90, "m_365": ms <= 365,
                               "m_resp": (ms <= 365) & (m["tr"] < c)}).groupby(cid, sort=False).sum().reindex(idx)
            f["campaigns_90d"] = ma["m_90"].fillna(0.0)
            f["campaigns_365d"] = ma["m_365"].fillna(0.0)
            f["campaign_response_rate"] = ma["m_resp"] / ma["m_365"].replace(0, np.nan)
        else:
            f["campaigns_90d"] = f["campaigns_365d"] = f["campaign_response_rate"] = np.nan
        lines_90 = df["lines_90"].fillna(0.0)
        if va is not None:
            v = va.reindex(idx)
            v_30 = v["v_30"].fillna(0.0) if has_views else pd.Series(np.nan, index=idx)
            v_90 = v["v_90"].fillna(0.0) if has_views else pd.Series(np.nan, index=idx)
            k_90 = v["k_90"].fillna(0.0) if has_carts else pd.Series(np.nan, index=idx)
            f |= {"views_30d": v_30, "views_90d": v_90, "carts_90d": k_90,
                  "view_conversion_90d": lines_90 / v_90.replace(0, np.nan),
                  "cart_conversion_90d": lines_90 / k_90.replace(0, np.nan),
                  "days_since_view": c - v["v_last"]}
        else:
            for k in ("views_30d", "views_90d", "carts_90d", "view_conversion_90d", "cart_conversion_90d",
                      "days_since_view"):
                f[k] = np.nan
        f["orders_same_weeks_last_year"] = df["n_last_year"].fillna(0.0)
        if cu is not None:
            cc = cu.reindex(idx)
            f |= {"membership_tier": cc["membership_tier"], "points": cc["points"], "country": cc["country"],
                  "gender": cc["gender"], "age": cutoff.year - cc["birth_year"],
                  "acquisition_channel": cc["acquisition_channel"]}
        else:
            for k in ("membership_tier", "points", "country", "gender", "age", "acquisition_channel"):
                f[k] = np.nan
        out = pd.DataFrame(f, index=idx)[catalog.feature_names()]
        out["eligible"] = df["n_elig"].fillna(0) > 0
        avail = bool(c + h <= max_day)
        out["label_available"] = avail
        out["churned"] = np.where(df["future"], 0.0, 1.0) if avail else np.nan
        out.insert(0, "cutoff", cutoff)
        frames.append(out.reset_index())
    res = pd.concat(frames, ignore_index=True)
    res["cutoff"] = res["cutoff"].astype("datetime64[us]")
    res["customer_id"] = res["customer_id"].astype("string")
    for name in catalog.feature_names():
        spec = catalog.FEATURES[name]
        res[name] = res[name].astype("string") if spec.dtype == "category" else res[name].astype("float64")
    return res.sort_values(["cutoff", "customer_id"], kind="stable").reset_index(drop=True)


def _order_agg(lines: pd.DataFrame) -> pd.DataFrame:
    g = lines.groupby(["customer_id", "okey", "day"], sort=False)
    out = g.agg(t=("t", "min"), amount=("amount", "sum"), units=("quantity", "sum"), lines=("t", "size"))
    counts = g[["amount", "quantity"]].count()
    out.loc[counts["amount"] == 0, "amount"] = np.nan
    out.loc[counts["quantity"] == 0, "units"] = np.nan
    return out.reset_index()


def compare(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Max absolute and relative differences of two snapshot tables (same keys required)."""
    keys = ["customer_id", "cutoff"]
    a = a.sort_values(keys).reset_index(drop=True)
    b = b.sort_values(keys).reset_index(drop=True)
    if len(a) != len(b) or not (a[keys].astype(str).values == b[keys].astype(str).values).all():
        return {"same_keys": False, "rows": [len(a), len(b)]}
    worst, worst_col, mismatched = 0.0, None, []
    for col in catalog.feature_names() + ["churned"]:
        x, y = a[col], b[col]
        if x.dtype == "string" or y.dtype == "string":
            if not x.astype(object).where(x.notna(), None).equals(y.astype(object).where(y.notna(), None)):
                mismatched.append(col)
            continue
        x, y = x.to_numpy("float64", na_value=np.nan), y.to_numpy("float64", na_value=np.nan)
        if not (np.isnan(x) == np.isnan(y)).all():
            mismatched.append(col)
            continue
        ok = ~np.isnan(x)
        if ok.any():
            rel = np.max(np.abs(x[ok] - y[ok]) / np.maximum(1.0, np.abs(y[ok])))
            if rel > worst:
                worst, worst_col = float(rel), col
    return {"same_keys": True, "rows": len(a), "max_rel_diff": worst, "worst_column": worst_col,
            "mismatched_columns": mismatched, "equal": not mismatched and worst < 1e-9}


# ------------------------------------------------------------------------------------------- runs
def _child(impl: str, workspace: str, cutoffs: list[str], out: str, horizon: int) -> None:
    """Run one implementation end to end from the workspace; print a JSON line; save the table."""
    ws = Workspace(workspace)
    if not impl.startswith("pandas"):
        from features.snapshots import build_snapshots  # libraries loaded before the clock starts, as pandas

        import ibis  # noqa: F401
    started = time.perf_counter()
    if impl.startswith("pandas"):
        tables = {n: ws.read_table(n) for n in ("events", "customers", "items", "tickets", "campaigns")
                  if ws.has_table(n)}
        loaded = time.perf_counter()
        df = pandas_snapshots(tables, cutoffs, horizon_days=horizon, reduce_once=impl == "pandas-reduced")
    else:
        loaded = started
        df = build_snapshots(ws, cutoffs, horizon_days=horizon, engine=impl)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss / 1024  # KiB -> MiB on Linux
    cpu = usage.ru_utime + usage.ru_stime
    df.to_parquet(out, index=False)
    print(json.dumps({"impl": impl, "seconds": seconds, "cpu_seconds": cpu, "load_seconds": loaded - started,
                      "peak_rss_mib": peak, "rows": int(len(df))}))


def run_child(impl: str, ws: Workspace, cutoffs: list, horizon: int, tmp: Path) -> tuple[dict, pd.DataFrame]:
    out = tmp / f"{impl}.parquet"
    cmd = [sys.executable, "-m", "bench.bench_features", "--child", impl, "--workspace", str(ws.root),
           "--horizon", str(horizon), "--cutoff-list", ",".join(str(pd.Timestamp(c).date()) for c in cutoffs),
           "--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line), pd.read_parquet(out)


def monthly_cutoffs(ws: Workspace, n: int) -> list[pd.Timestamp]:
    """``n`` month starts ending at the last full month of the data (labels may be missing at the end)."""
    ts = ws.read_table("events", columns=["timestamp"])["timestamp"]
    last = ts.max().normalize().replace(day=1)
    first = ts.min().normalize()
    dates = [last - pd.DateOffset(months=i) for i in range(n)][::-1]
    return [pd.Timestamp(d) for d in dates if d > first]


def real_workspace(path: str | None) -> Workspace:
    if path:
        return Workspace(path)
    from features import ingest

    ws = Workspace(Path(tempfile.gettempdir()) / "crmml-bench-real")
    if not ws.has_table("events"):
        print("ingesting the UCI Online Retail files ...", flush=True)
        ingest.save(ws, ingest.read_online_retail(REAL_FILES))
    return ws


def synthetic_workspace(n_events: int, seed: int = 0, path: str | None = None) -> Workspace:
    """The synthetic shop of about ``n_events`` events, generated once into ``path`` (default: under /tmp)."""
    from features import synthetic

    n_customers = max(1000, n_events // EVENTS_PER_CUSTOMER)
    ws = Workspace(path or Path(tempfile.gettempdir()) / f"crmml-bench-syn-{n_customers}-{seed}")
    if not ws.has_table("events"):
        print(f"generating a synthetic shop of {n_customers:,} customers ...", flush=True)
        tables = synthetic.generate(n_customers=n_customers, seed=seed)
        synthetic.write(ws, tables, seed=seed, n_customers=n_customers)
        del tables
    return ws


def bench_dataset(name: str, ws: Workspace, cutoffs: list, horizon: int, impls: list[str], repeat: int = 1) -> dict:
    """Each implementation ``repeat`` times, in rounds (every implementation once per round, so a slow
    stretch of a shared machine hits them alike); the run with the median wall time is reported."""
    n_events = len(ws.read_table("events", columns=["event_type"]))
    result = {"dataset": name, "events": n_events, "cutoffs": len(cutoffs), "repeat": repeat,
              "first_cutoff": str(cutoffs[0].date()), "last_cutoff": str(cutoffs[-1].date()), "runs": {},
              "all_runs": {impl: [] for impl in impls}}
    tables = {}
    with tempfile.TemporaryDirectory(prefix="crmml-bench-") as tmp:
        for round_ in range(repeat):
            for impl in impls:
                print(f"[{name}] {impl} ({round_ + 1}/{repeat}) ...", flush=True)
                stats, table = run_child(impl, ws, cutoffs, horizon, Path(tmp))
                result["all_runs"][impl].append(stats)
                tables[impl] = table
                print(f"[{name}] {impl}: {stats['seconds']:.1f} s (CPU {stats['cpu_seconds']:.1f} s), "
                      f"peak RSS {stats['peak_rss_mib']:.0f} MiB, {stats['rows']:,} rows", flush=True)
    for impl, runs in result["all_runs"].items():
        result["runs"][impl] = sorted(runs, key=lambda r: r["seconds"])[(len(runs) - 1) // 2]
    duck = result["runs"].get("duckdb")
    for impl in tables:
        if impl != "duckdb" and duck:
            result[f"{impl}_vs_duckdb"] = compare(tables[impl], tables["duckdb"])
            result[f"speedup_vs_{impl}"] = result["runs"][impl]["seconds"] / duck["seconds"]
            result[f"cpu_ratio_vs_{impl}"] = result["runs"][impl]["cpu_seconds"] / duck["cpu_seconds"]
    return result


def print_results(results: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Feature build: Ibis/DuckDB (one pass) vs pandas (same features)")
    for col in ("data", "events", "cutoffs", "engine", "wall s", "CPU s", "peak RSS MiB", "rows",
                "DuckDB faster by (wall)", "same table as DuckDB"):
        table.add_column(col, justify="right")
    for res in results:
        for impl, run in res["runs"].items():
            speed = res.get(f"speedup_vs_{impl}")
            same = res.get(f"{impl}_vs_duckdb", {}).get("equal") if impl != "duckdb" else None
            table.add_row(res["dataset"], f"{res['events']:,}", str(res["cutoffs"]), impl, f"{run['seconds']:.1f}",
                          f"{run['cpu_seconds']:.1f}", f"{run['peak_rss_mib']:,.0f}", f"{run['rows']:,}",
                          f"{speed:.1f}x" if speed else "", "" if same is None else ("yes" if same else "NO"))
    Console().print(table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--real-workspace", help="workspace with the ingested UCI data (default: ingest into /tmp)")
    ap.add_argument("--real-cutoffs", type=int, default=24)
    ap.add_argument("--synthetic-events", type=int, default=10_000_000)
    ap.add_argument("--synthetic-workspace", help="workspace of the synthetic shop, generated there when empty "
                    "(default: /tmp/crmml-bench-syn-<customers>-0); reused by later runs")
    ap.add_argument("--synthetic-cutoffs", type=int, default=12)
    ap.add_argument("--horizon", type=int, default=90)
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each implementation; the median is reported")
    ap.add_argument("--spark", action="store_true", help="also time PySpark (local) on the real data")
    ap.add_argument("--output", default=str(REPO / "bench" / "results" / "features.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--workspace", help=argparse.SUPPRESS)
    ap.add_argument("--cutoff-list", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.workspace, args.cutoff_list.split(","), args.out, args.horizon)
        return 0
    results = []
    if not args.skip_real:
        ws = real_workspace(args.real_workspace)
        impls = ["duckdb", "pandas", "pandas-reduced"] + (["spark"] if args.spark else [])
        results.append(bench_dataset("UCI Online Retail", ws, monthly_cutoffs(ws, args.real_cutoffs), args.horizon,
                                     impls, args.repeat))
    if not args.skip_synthetic:
        ws = synthetic_workspace(args.synthetic_events, path=args.synthetic_workspace)
        print(f"synthetic workspace: {ws.root}", flush=True)
        results.append(bench_dataset("synthetic", ws, monthly_cutoffs(ws, args.synthetic_cutoffs), args.horizon,
                                     ["duckdb", "pandas", "pandas-reduced"], args.repeat))
    print_results(results)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "load_avg_at_end": os.getloadavg()}
    out.write_text(json.dumps({"machine": machine, "results": results}, indent=2, default=str))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
