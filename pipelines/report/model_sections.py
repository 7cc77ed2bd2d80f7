"""The sections built on the models' outputs: churn risk by segment, the churn and recommender
evaluations against their baselines, and the retention list."""

from __future__ import annotations

import math

import pandas as pd

from features.numeric import finite_or_none as _finite
from pipelines.report.evaluations import model_row, versus, view_tables
from pipelines.report.inputs import PROBABILITY, Found, ModelEvaluation, ValueBasis, scores_date
from pipelines.report.page import Section, SectionSpec, Table
from pipelines.report.plots import plot_metric_bars, plot_risk_by_segment, plot_value_at_stake
from pipelines.report.text import date, is_missing, label, money, num, pct, reason_text
from training.churn_metrics import DISPLAY as CHURN_DISPLAY  # (key, header, format, higher is better)
from training.retention import retention_list

TOP_RETENTION = 20
STAKE = "value_at_stake"  # column of pipelines.score's output and of training.retention.retention_list


def churn_risk(scores: Found[pd.DataFrame], customer360_at_scoring: Found[pd.DataFrame],
               value: Found[ValueBasis]) -> Section:
    s = Section()
    if not scores.ok or PROBABILITY not in scores.value.columns:
        s.missing = scores.error or (f"No churn scores: run `crmml score` ({scores.source}) to see the churn risk "
                                     "by segment.")
        return s
    frame, src = scores.value, scores.source
    d = frame[["customer_id", PROBABILITY] + [c for c in ("rfm_segment", "value_tier", STAKE)
                                              if c in frame.columns]].copy()
    scored_at = scores_date(frame)
    c360 = customer360_at_scoring.value  # segments and tiers of the customers when they were scored
    if c360 is not None:
        for col in ("rfm_segment", "value_tier"):
            if col not in d.columns and col in c360.columns:
                d = d.merge(c360[["customer_id", col]], on="customer_id", how="left")
    if "value_tier" not in d.columns and value.ok:
        d["value_tier"] = d["customer_id"].map(value.value.tiers)
    stake = STAKE if STAKE in d.columns else None
    if stake is None and value.ok:
        d[STAKE] = d[PROBABILITY] * d["customer_id"].map(value.value.revenue).fillna(0).clip(lower=0)
        stake = STAKE

    def group(col):
        if col not in d.columns or d[col].isna().all():
            return None
        agg = {"customers": (PROBABILITY, "size"), "mean_risk": (PROBABILITY, "mean")}
        if stake:
            agg["value_at_risk"] = (stake, "sum")
        return d.dropna(subset=[col]).groupby(col).agg(**agg)

    by_seg, by_tier = group("rfm_segment"), group("value_tier")
    overall = float(d[PROBABILITY].mean())
    if by_seg is None and by_tier is None:
        s.missing = "Churn scores found, but no RFM segment or value tier to group them by."
        return s
    lead = by_seg if by_seg is not None else by_tier
    worst = lead["mean_risk"].idxmax()
    parts = [f"{label(worst)} customers have the highest churn risk ({pct(lead.loc[worst, 'mean_risk'])} "
             f"vs {pct(overall)} overall)"]
    if by_tier is not None and "A" in by_tier.index:
        parts.append(f"tier A customers average {pct(by_tier.loc['A', 'mean_risk'])}")
        if stake:
            total = by_tier["value_at_risk"].sum()
            share = by_tier.loc["A", "value_at_risk"] / total if total else math.nan
            parts[-1] += f" and carry {pct(share)} of the value at stake"
    s.takeaway = "; ".join(parts) + "."
    s.plots.append(plot_risk_by_segment(by_seg, by_tier, overall))
    if by_seg is not None:
        tab = by_seg.sort_values("mean_risk", ascending=False)
        cols = ["segment", "customers", "mean churn probability"] + (["value at stake"] if stake else [])
        rows = [[label(n), num(r["customers"]), pct(r["mean_risk"], 1)] + ([num(r["value_at_risk"])] if stake else [])
                for n, r in tab.iterrows()]
        s.tables.append(Table(cols, rows, numeric=[False] + [True] * (len(cols) - 1)))
    s.notes.append(f"{len(d):,} customers scored ({src}" + (f", as of {date(scored_at)}" if scored_at is not None else "")
                   + "); segments and tiers at that date; value at stake = churn probability x the customer's "
                   "12-month value.")
    s.source = src
    return s


def _df_table(table: pd.DataFrame, index_name: str = "model / baseline", caption: str = "",
              headers: dict | None = None, formats: dict | None = None) -> Table:
    headers, formats = headers or {}, formats or {}
    cols = [index_name] + [headers.get(c, str(c)) for c in table.columns]
    rows = [[label(i)] + [("–" if not math.isfinite(float(v)) else formats.get(c, "{:.4f}").format(float(v)))
                          for c, v in r.items()]
            for i, r in table.iterrows()]
    return Table(cols, rows, caption=caption, numeric=[False] + [True] * len(table.columns))


CHURN_PLOTTED = ["auc", "pr_auc", "brier", "top_decile_lift"]


def churn_evaluation(churn_evaluation: Found[ModelEvaluation]) -> Section:
    s = Section()
    if not churn_evaluation.ok:
        s.missing = churn_evaluation.error or (
            "No churn evaluation: train or evaluate the churn model (`crmml train churn`, "
            "`crmml evaluate churn`) to compare it with its baselines.")
        return s
    ev, src = churn_evaluation.value, churn_evaluation.source
    tables = view_tables(ev.views, [d[0] for d in CHURN_DISPLAY])
    first = next(iter(tables.values()))
    model = model_row(first)
    vs = versus(first, "auc", model)
    s.takeaway = f"The churn model's ROC-AUC is {vs}." if vs else f"{len(first)} models and baselines evaluated."
    if "brier" in first.columns and len(first) > 1:
        s.takeaway += f" Brier score (lower is better): {versus(first, 'brier', model, higher_better=False)}."
    headers = {d[0]: d[1] for d in CHURN_DISPLAY}
    lower = [headers.get(k, k) for k, *_, better in CHURN_DISPLAY if not better]
    plotted = {v: t[[c for c in CHURN_PLOTTED if c in t.columns] or list(t.columns)[:4]].rename(columns=headers)
               for v, t in tables.items()}
    s.plots.append(plot_metric_bars(plotted, "Churn model vs baselines", "churn_metrics",
                                    "The churn model (blue) and each baseline on the evaluation window; "
                                    "the best baseline of each metric in orange.", model_row=model, lower_better=lower))
    s.plots.extend(ev.plots)
    formats = {d[0]: d[2] for d in CHURN_DISPLAY}
    for view, table in tables.items():
        s.tables.append(_df_table(table, caption=view, headers=headers, formats=formats))
    details = ev.details
    if isinstance(details.get("tiers"), list) and details["tiers"]:
        s.tables.append(Table(
            ["risk tier", "customers", "mean churn probability", "observed churn rate", "value at stake"],
            [[label(t.get("tier", "")), num(_finite(t.get("customers"))), pct(_finite(t.get("mean_probability")), 1),
              pct(_finite(t.get("observed_churn_rate")), 1), num(_finite(t.get("value_at_stake")))]
             for t in details["tiers"] if isinstance(t, dict)],
            caption="risk tiers on the evaluation window: predicted against observed churn",
            numeric=[False, True, True, True, True]))
    facts = []
    if details.get("cutoff"):
        facts.append(f"evaluation cutoff {details['cutoff']}")
    if details.get("horizon_days"):
        facts.append(f"horizon {details['horizon_days']} days")
    if _finite(details.get("n_customers")):
        facts.append(f"{int(details['n_customers']):,} customers")
    if _finite(details.get("churn_rate")):
        facts.append(f"churn rate {pct(float(details['churn_rate']), 1)}")
    s.source = src
    s.notes.append(f"From {src}" + (f": {', '.join(facts)}" if facts else "") + ". The model is trained only on "
                   "labels that end on or before the evaluation cutoff; baselines are scored on the same customers.")
    return s


REC_METRICS = ["ndcg@10", "recall@10", "precision@10", "map@10", "hit_rate@10", "coverage", "novelty"]
REC_PLOTTED = ["ndcg@10", "recall@10", "hit_rate@10", "coverage"]
REC_VIEW_CAPTIONS = {
    "all": "all items (repeat purchases count)",
    "new": "items new to the customer (already-bought items excluded)",
}


def recommender_evaluation(recommender_evaluation: Found[ModelEvaluation]) -> Section:
    s = Section()
    if not recommender_evaluation.ok:
        s.missing = recommender_evaluation.error or (
            "No recommender evaluation: train or evaluate the recommender (`crmml train recommender`, "
            "`crmml evaluate recommender`) to compare it with its baselines.")
        return s
    ev, src = recommender_evaluation.value, recommender_evaluation.source
    tables = view_tables(ev.views, REC_METRICS)
    parts = []
    for view, table in tables.items():
        model = model_row(table)
        key = next((c for c in ("ndcg@10", "recall@10") if c in table.columns), table.columns[0])
        vs = versus(table, key, model)
        if vs:
            parts.append(f"{key}{f' ({view} items)' if view else ''} is {vs}")
    s.takeaway = ("The recommender's " + "; ".join(parts) + ".") if parts else "Recommender evaluation."
    plotted = {v: t[[c for c in REC_PLOTTED if c in t.columns] or list(t.columns)[:4]] for v, t in tables.items()}
    model = model_row(next(iter(tables.values())))
    s.plots.append(plot_metric_bars(plotted, "Recommender vs baselines", "recommender_metrics",
                                    "Ranking metrics of the recommender (blue) and its baselines on held-out purchases; "
                                    "the best baseline of each metric in orange.",
                                    model_row=model))
    s.plots.extend(ev.plots)
    for view, table in tables.items():
        s.tables.append(_df_table(table, caption=REC_VIEW_CAPTIONS.get(view, view)))
    facts = [f"{k.replace('_', ' ')}: {ev.details[k]}" for k in ("cutoff", "window_days", "k", "n_users", "n_users_new")
             if k in ev.details]
    s.source = src
    s.notes.append(f"From {src}" + (f" ({', '.join(facts)})" if facts else "") + ".")
    return s


#: per model: (label, the metrics shown per cutoff as (view, metric, header, digits))
ROLLING_SHOWN = (
    ("churn_rolling", "Churn model", (("all", "auc", "ROC-AUC", 3), ("all", "brier", "Brier (lower is better)", 4))),
    ("recommender_rolling", "Recommender", (("all", "ndcg@10", "nDCG@10, all purchases", 3),
                                            ("new", "ndcg@10", "nDCG@10, items new to the customer", 3))),
)


def _rolling_table(details: dict, view: str, metric: str, header: str, digits: int) -> Table | None:
    """Scorers x cutoffs of one metric with mean ± sd, from a rolling evaluation's JSON."""
    cuts = details.get("per_cutoff") or []
    scorers = list(dict.fromkeys(n for c in cuts for n in (c.get("metrics", {}).get(view) or {})))
    if not scorers:
        return None
    scorers.sort(key=lambda n: n != "model")
    summary = (details.get("summary") or {}).get(view, {})
    rows = []
    for name in scorers:
        cells = [label(name)]
        for c in cuts:
            v = _finite((c["metrics"].get(view, {}).get(name) or {}).get(metric))
            cells.append("–" if v is None else f"{v:.{digits}f}")
        st = summary.get(name, {}).get(metric, {})
        mean, sd = _finite(st.get("mean")), _finite(st.get("sd"))
        cells.append("–" if mean is None else f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}"))
        rows.append(cells)
    return Table(["scorer"] + [str(c.get("cutoff")) for c in cuts] + ["mean ± sd"], rows, caption=header,
                 numeric=[False] + [True] * (len(cuts) + 1))


def rolling_evaluation(churn_rolling: Found, recommender_rolling: Found) -> Section:
    s = Section()
    found = {"churn_rolling": churn_rolling, "recommender_rolling": recommender_rolling}
    if not any(f.ok for f in found.values()):
        s.missing = (churn_rolling.error or recommender_rolling.error or
                     "No rolling evaluation: run `crmml evaluate churn --cutoffs 4` or `crmml evaluate recommender "
                     "--cutoffs 4` to see the models against their baselines at several cutoffs, graded A/B/C.")
        return s
    parts, sources = [], []
    for key, name, shown in ROLLING_SHOWN:
        f = found[key]
        if not f.ok:
            s.notes.append(f"{name}: no rolling evaluation ({f.error or f.source}).")
            continue
        d = f.value.details
        g = d.get("grade") or {}
        parts.append(f"{name.lower()} graded {g.get('letter', '?')} over {len(d.get('cutoffs', []))} cutoffs")
        s.plots.extend(f.value.plots)
        for view, metric, header, digits in shown:
            table = _rolling_table(d, view, metric, f"{name}: {header}", digits)
            if table is not None:
                s.tables.append(table)
        s.notes.append(f"{name}: {g.get('reason', 'no grade')}. Rule: {g.get('rule', '')}.")
        sources.append(f.source)
    s.takeaway = "The " + " and the ".join(parts) + "." if parts else ""
    s.notes.append("Each cutoff trains strictly before it and tests on the window after it; baselines are scored on "
                   "the same customers. The best baseline is the best one at each cutoff.")
    s.source = ", ".join(sources)
    return s


RETENTION_COLUMNS = [  # (column, header, kind) shown when present, in this order
    ("rank", "#", "int"),
    ("customer_id", "customer", "text"),
    (PROBABILITY, "churn risk", "pct"),
    ("risk_tier", "risk tier", "label"),
    ("clv_12m", "12-month value", "money"),
    (STAKE, "value at stake", "money"),
    ("rfm_segment", "RFM segment", "label"),
    ("value_tier", "tier", "text"),
    ("suggested_action", "suggested action", "label"),
    ("why", "why", "text"),
]
RETENTION_NEEDS = {PROBABILITY, "risk_tier", "reasons", "clv_12m"}  # what training.retention.retention_list reads
FORMATS = {
    "int": lambda v: num(float(v)),
    "pct": lambda v: pct(float(v), 0),
    "money": lambda v: num(float(v)),
    "label": lambda v: label(v),
    "text": lambda v: str(v),
}


def retention(scores: Found[pd.DataFrame], customer360: Found[pd.DataFrame]) -> Section:
    s = Section()
    if not scores.ok or not RETENTION_NEEDS <= set(scores.value.columns):
        s.missing = scores.error or (f"No retention list: run `crmml score` ({scores.source}) to rank the customers "
                                     "at risk by value at stake.")
        return s
    df = retention_list(scores.value)
    src = f"training.retention.retention_list on {scores.source}"
    df = df.sort_values(STAKE, ascending=False, kind="stable")
    if "why" not in df.columns or not df["why"].astype(str).str.len().any():
        df["why"] = df["reasons"].map(reason_text)
    top = df.head(TOP_RETENTION)
    c360 = customer360.value
    if c360 is not None:
        extra = [c for c in ("rfm_segment", "value_tier") if c in c360.columns and c not in top.columns]
        if extra:
            top = top.merge(c360[["customer_id"] + extra], on="customer_id", how="left")
    total = float(df[STAKE].sum())
    top_sum = float(top[STAKE].sum())
    s.takeaway = (f"The top {len(top)} customers hold {money(top_sum)} of value at stake: "
                  f"{pct(top_sum / total if total else math.nan)} of the {money(total)} at stake across the "
                  f"{len(df):,} customers on the list.")
    s.plots.append(plot_value_at_stake(top, "customer_id", STAKE, PROBABILITY))
    cols = [(c, h, k) for c, h, k in RETENTION_COLUMNS if c in top.columns]
    rows = [["" if is_missing(r[c]) else FORMATS[k](r[c]) for c, _, k in cols] for _, r in top.iterrows()]
    s.tables.append(Table([h for _, h, _ in cols], rows, numeric=[k in ("int", "pct", "money") for _, _, k in cols]))
    s.notes.append(f"From {src}. Value at stake = churn probability x the customer's expected value over the next "
                   "12 months.")
    s.source = src
    return s


CHURN_RISK = SectionSpec("churn-risk", "Churn risk by segment", ("scores", "customer360_at_scoring", "value"),
                         churn_risk)
CHURN_EVALUATION = SectionSpec("churn-eval", "Churn model evaluation against baselines", ("churn_evaluation",),
                               churn_evaluation)
RECOMMENDER_EVALUATION = SectionSpec("rec-eval", "Recommendation metrics against baselines",
                                     ("recommender_evaluation",), recommender_evaluation)
ROLLING_EVALUATION = SectionSpec("rolling-eval", "Models at several cutoffs: rolling evaluation and grade",
                                 ("churn_rolling", "recommender_rolling"), rolling_evaluation)
RETENTION = SectionSpec("retention-list", "Retention list: top customers by value at stake",
                        ("scores", "customer360"), retention)
