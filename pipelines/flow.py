"""The steps of `crmml run`, from raw histories to promoted models, batch scores and the report.

ingest -> features -> train_churn -> train_recommender -> train_uplift -> promote -> score -> report

``train_uplift`` learns from randomised campaigns (rows with a treatment/control group) and says it
skipped when the shop has none (the default synthetic shop; ``--experiments N`` adds some).

Each step is cached by the hash of its inputs, its code and the steps before it (``pipelines.steps``).
Training registers a model version only when the training run finishes cleanly
(``training.registry.training_run``), so a failure anywhere leaves the registry as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from features.workspace import Workspace, file_sha256
from pipelines.score import scores_path
from pipelines.steps import Pipeline, Step, StepResult


@dataclass
class RunParams:
    files: list[str] = field(default_factory=list)
    source: str = "synthetic"
    customers: int = 5000
    seed: int = 0
    experiments: int = 0  # synthetic shop: randomised campaigns with planted effects
    horizon: int = 90
    tune: bool = False
    k: int = 10
    db_url: str | None = None
    transactions: dict = field(default_factory=dict)
    config: str | None = None  # a mapping file (crmml init-config): replaces source and files


def _params(ctx) -> RunParams:
    return ctx["params"]


# --------------------------------------------------------------------------- steps
def ingest_inputs(ctx) -> dict:
    from features.event_log import log_state

    p = _params(ctx)
    logged = log_state(ctx["workspace"])  # events accepted online since: ingest again
    if p.config is not None:
        from features import mapping

        cfg = mapping.load(p.config)
        files = [{"path": str(f.resolve()), "sha256": file_sha256(f)} for src in cfg.sources for f in cfg.files_of(src)]
        return {"source": "config", "config": file_sha256(Path(p.config)), "files": files, "events_log": logged}
    if p.source == "synthetic":
        return {"source": p.source, "customers": p.customers, "seed": p.seed, "experiments": p.experiments,
                "events_log": logged}
    files = [{"path": str(Path(f).resolve()), "sha256": file_sha256(Path(f))} for f in p.files]
    return {"source": p.source, "files": files, "transactions": p.transactions, "events_log": logged}


def run_ingest(ctx) -> dict:
    from features import ingest, synthetic

    p, ws = _params(ctx), ctx["workspace"]
    if p.config is not None:
        from features import mapping
        from features.forget import forgotten_tokens

        result = ingest.read_mapping(mapping.load(p.config), source=Path(p.config).stem,
                                     forget=forgotten_tokens(ws))
        ingest.save(ws, result)
        rows = {"read": result.n_read, "accepted": result.n_accepted, "rejected": result.n_rejected}
    elif p.source == "synthetic":
        tables = synthetic.generate(n_customers=p.customers, seed=p.seed, experiments=p.experiments)
        record = synthetic.write(ws, tables, p.seed, p.customers)
        rows = record["tables"]
    else:
        if not p.files:
            raise ValueError(f"--source {p.source} needs input files")
        from features.forget import forgotten_tokens

        forget = forgotten_tokens(ws)  # customers erased by `crmml forget` stay out
        if p.source == "online-retail":
            result = ingest.read_online_retail(p.files, forget=forget)
        elif p.source == "transactions":
            if len(p.files) != 1 or not p.transactions.get("customer_col") or not p.transactions.get("time_col"):
                raise ValueError("--source transactions needs one file, --customer-col and --time-col")
            result = ingest.read_transactions(p.files[0], **p.transactions, forget=forget)
        else:
            raise ValueError(f"crmml run needs purchase events; --source {p.source} feeds the recommender only "
                             "(use crmml ingest and crmml train recommender)")
        ingest.save(ws, result)
        rows = {"read": result.n_read, "accepted": result.n_accepted, "rejected": result.n_rejected}
    events = ws.read_table("events", columns=["customer_id", "timestamp"])
    return {
        "source": "config" if p.config is not None else p.source,
        "rows": rows,
        "events": int(len(events)),
        "customers": int(events["customer_id"].nunique()),
        "period": [str(events["timestamp"].min()), str(events["timestamp"].max())],
        "data_fingerprint": ws.data_fingerprint(),
    }


def run_features(ctx) -> dict:
    from features.build import build_features

    summary = build_features(ctx["workspace"].root, horizon=_params(ctx).horizon)
    return {"rows": summary["rows"], "customer360": summary.get("customer360", {}).get("customers")}


def run_train_churn(ctx) -> dict:
    from training.churn_training import train_churn_model

    p = _params(ctx)
    return train_churn_model(ctx["workspace"], horizon=p.horizon, tune=p.tune, progress=ctx.get("progress"))


def run_train_recommender(ctx) -> dict:
    from training.recommender_training import train_recommender_model

    return train_recommender_model(ctx["workspace"], tune=_params(ctx).tune, progress=ctx.get("progress"))


def run_train_uplift(ctx) -> dict:
    """The uplift model when the shop has randomised campaigns; otherwise a summary saying why not."""
    from training.uplift_training import train_uplift_model

    try:
        result = train_uplift_model(ctx["workspace"], progress=ctx.get("progress"))
    except ValueError as exc:  # no randomised campaign, or none whose horizon is over: nothing to learn
        return {"skipped": str(exc)}
    return {k: v for k, v in result.items() if k not in ("model", "evaluation")}


def run_promote(ctx) -> dict:
    """Put each new challenger through the gate against the champion, on the newest window."""
    from training.names import MODEL_NAMES, UPLIFT
    from training.promotion import promote_challengers

    uplift = ctx.get("train_uplift") or {}
    names = MODEL_NAMES + ((UPLIFT,) if uplift.get("version") is not None else ())
    return promote_challengers(ctx["workspace"], names)


def run_score(ctx) -> dict:
    from pipelines.score import score

    p = _params(ctx)
    return score(ctx["workspace"], k=p.k, db_url=p.db_url)


def run_report(ctx) -> dict:
    from pipelines.report import build_report, log_report

    ws = ctx["workspace"]
    path = build_report(ws)
    log_report(ws, path)
    return {"html": str(path)}


def _report_path(ws: Workspace) -> Path:
    from pipelines.report import report_path

    return report_path(ws)


def steps() -> list[Step]:
    return [
        Step("ingest", run_ingest, ingest_inputs, code=("features",)),
        Step("features", run_features, lambda ctx: {"horizon": _params(ctx).horizon}, after=("ingest",),
             code=("features",)),
        Step("train_churn", run_train_churn, lambda ctx: {"horizon": _params(ctx).horizon, "tune": _params(ctx).tune},
             after=("features",), code=("features", "training")),
        Step("train_recommender", run_train_recommender, lambda ctx: {"tune": _params(ctx).tune},
             after=("ingest",), code=("features", "training")),
        Step("train_uplift", run_train_uplift, after=("ingest",), code=("features", "training")),
        Step("promote", run_promote, after=("train_churn", "train_recommender", "train_uplift")),
        Step("score", run_score, lambda ctx: {"k": _params(ctx).k, "db_url": _params(ctx).db_url},
             after=("features", "promote"), code=("pipelines",),
             outputs=lambda ctx: [scores_path(ctx["workspace"])]),
        Step("report", run_report, after=("score",), code=("pipelines",),
             outputs=lambda ctx: [_report_path(ctx["workspace"])]),
    ]


def pipeline(ws: Workspace, step_list: list[Step] | None = None) -> Pipeline:
    return Pipeline(ws, step_list or steps())


# --------------------------------------------------------------------------- summary
def _fmt(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else str(value))


def summary_table(ws: Workspace, results: list[StepResult], seconds: float) -> Table:
    """The final table: data, models (metrics beside their baselines), promotion, where the outputs are."""
    by = {r.name: r.summary for r in results}
    table = Table(title=f"crmml run ({seconds:.0f} s)", show_lines=True)
    table.add_column("", style="bold")
    table.add_column("")
    ing = by.get("ingest", {})
    table.add_row("data", f"{ing.get('source')}: {ing.get('events', 0):,} events, {ing.get('customers', 0):,} "
                          f"customers, {ing.get('period', ['?', '?'])[0][:10]} .. {ing.get('period', ['?', '?'])[1][:10]}")
    for step, name in (("train_churn", "churn"), ("train_recommender", "recommender")):
        summary = by.get(step, {})
        metric = summary.get("primary_metric")
        rows = [f"{who}: {_fmt(m.get(metric))}" for who, m in summary.get("metrics", {}).items()]
        table.add_row(f"{name} ({metric})", "  ".join(rows) or "-")
    uplift = by.get("train_uplift", {})
    if uplift:
        metrics = uplift.get("metrics", {})
        table.add_row("uplift (auuc)", f"skipped: {uplift['skipped']}" if "skipped" in uplift else
                      f"model: {_fmt(metrics.get('auuc'))}  churn risk: {_fmt(metrics.get('auuc_churn_risk'))}  "
                      f"random: {_fmt(metrics.get('auuc_random'))}")
    for name, decision in by.get("promote", {}).items():
        table.add_row(f"gate {name}", f"{decision['decision']} (champion v{decision['champion']})")
    score = by.get("score", {})
    if score:
        table.add_row("batch scores", f"{score.get('rows', 0):,} customers -> {score.get('parquet')}")
    if "report" in by:
        table.add_row("report", by["report"]["html"])
    table.add_row("MLflow", f"{ws.mlflow_uri}  (UI: mlflow/server.sh {ws.root})")
    table.add_row("steps", ", ".join(f"{r.name} {r.status}" for r in results))
    return table

