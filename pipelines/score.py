"""Nightly batch scoring: every eligible customer's churn warning, insight and recommendations.

Writes ``outputs/scores.parquet`` and ``outputs/scores.csv`` as one run: both files (and a manifest with
their hashes) go into a new run folder ``outputs/runs/<run>/``, then the link ``outputs/runs/current`` is
switched to it in one rename. ``outputs/scores.parquet`` and ``outputs/scores.csv`` are fixed links through
``runs/current``, so a reader sees both files of the previous run or both of the new one, never half a file
and never files of two runs, wherever the writer is killed. What a killed run leaves (``outputs/.scores.*``)
is removed by the next. Optionally a database table through a SQLAlchemy URL, replaced in one transaction.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from features.dates import workspace_as_of as as_of_date
from features.workspace import Workspace, file_sha256, publish_version, switch_link

OUTPUT_COLUMNS = [
    "customer_id", "as_of", "churn_probability", "risk_tier", "reasons", "value_at_stake", "clv_12m",
    "suggested_action", "action_text", "rfm_segment", "value_tier", "lifecycle_stage", "recommendations",
    "churn_model_version", "recommender_model_version",
    "next_best_action", "nba_expected_value", "nba_reason", "nba_source", "uplift_model_version",
]


def champion_version(ws: Workspace, name: str) -> str:
    from training import registry

    mv = registry.client(ws).get_model_version_by_alias(name, registry.CHAMPION)
    return str(mv.version)


SCORES_PARQUET = "scores.parquet"
SCORES_CSV = "scores.csv"
RUNS = "runs"  # outputs/runs/<run>/: one folder per published run
CURRENT = "current"  # outputs/runs/current: the link to the published run
MANIFEST = "manifest.json"  # in each run folder: the run, its rows, each file's size and SHA-256
STAGING_PREFIX = ".scores."  # outputs/.scores.*: a run being written (or left by a killed one)


def scores_path(ws: Workspace, fmt: str = "parquet") -> Path:
    """Where ``crmml score`` writes the batch scores (``fmt``: parquet or csv)."""
    return ws.outputs_dir / (SCORES_PARQUET if fmt == "parquet" else SCORES_CSV)


ENGINES = ("duckdb", "spark")
SPARK_RESULT = "churn_probability double, risk_tier string, reasons string"  # the churn pyfunc's output


def spark_predict(model_uri: str, spark=None):
    """``predict`` for :func:`training.churn.score_customers`: the registered churn pyfunc as a Spark UDF.

    The model is evaluated by ``mlflow.pyfunc.spark_udf`` on Spark's executors (the local session of
    ``features.engines`` unless ``spark`` is given), over the columns of the model's signature; rows
    come back in their input order (a row number travels with them).
    """
    from pyspark.sql import functions as F

    import mlflow
    from features.engines import spark_session

    spark = spark or spark_session()
    columns = mlflow.models.get_model_info(model_uri).signature.inputs.input_names()
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type=SPARK_RESULT, env_manager="local")

    def predict(inputs: pd.DataFrame) -> pd.DataFrame:
        frame = inputs[columns].reset_index(drop=True)
        frame.insert(0, "_row", range(len(frame)))
        sdf = spark.createDataFrame(frame)
        scored = sdf.select("_row", udf(F.struct(*columns)).alias("p")).select("_row", "p.*").toPandas()
        scored = scored.sort_values("_row").reset_index(drop=True)
        scored["reasons"] = scored["reasons"].map(json.loads)  # same lists as the in-process path
        return scored

    return predict


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def churn_scores(ws: Workspace, as_of: pd.Timestamp, engine: str = "duckdb", model=None,
                 matrix: pd.DataFrame | None = None) -> pd.DataFrame:
    """The churn champion's scores of the customers eligible at ``as_of`` (``score_customers`` columns).

    The feature matrix is the workspace's stored one (built by ``engine`` when missing); with
    ``engine="spark"`` the registered model runs as a Spark UDF, otherwise in this process. ``model`` and
    ``matrix``: the champion and the matrix when the caller has them already (``score_frame``).
    """
    from features.churn_features import feature_matrix
    from training import registry
    from training.churn import score_customers
    from training.churn_pyfunc import load_churn
    from training.clv import clv_frame

    check_engine(engine)
    registry.configure(ws)
    churn_uri = registry.model_uri(registry.CHURN)
    churn_model = model if model is not None else load_churn(churn_uri)
    frame = matrix if matrix is not None else feature_matrix(ws, [as_of], horizon_days=churn_model.horizon_days,
                                                             engine=engine)
    events = ws.read_table("events", columns=["customer_id", "event_type", "timestamp", "amount"])
    predict = spark_predict(churn_uri) if engine == "spark" else None
    return score_customers(churn_model, frame, clv_frame(events, as_of), predict=predict)


def score_frame(ws: Workspace, k: int = 10, as_of=None, engine: str = "duckdb") -> pd.DataFrame:
    """Score every customer eligible at ``as_of`` with the champion models; one row per customer.

    ``engine``: ``duckdb`` (features on DuckDB, churn model in this process) or ``spark`` (features
    on Spark, the churn model as a Spark UDF over the feature matrix); the same scores either way.
    """
    from features import insight
    from features.churn_features import feature_matrix
    from training import registry
    from training.churn_pyfunc import load_churn
    from training.recommender_pyfunc import load_recommender

    check_engine(engine)
    registry.configure(ws)
    as_of = pd.Timestamp(as_of).normalize() if as_of is not None else as_of_date(ws)
    # one feature matrix for the churn scores and the next best action (the stored table at as_of)
    churn_model = load_churn(registry.model_uri(registry.CHURN))
    frame = feature_matrix(ws, [as_of], horizon_days=churn_model.horizon_days, engine=engine)
    scored = churn_scores(ws, as_of, engine=engine, model=churn_model, matrix=frame)

    c360 = insight.build_customer360(ws, as_of=as_of)
    c360["customer_id"] = c360["customer_id"].astype(str)
    scored = scored.merge(
        c360[["customer_id", "rfm_segment", "value_tier", "lifecycle_stage"]], on="customer_id", how="left"
    )
    recommender = load_recommender(registry.model_uri(registry.RECOMMENDER))
    recs = recommender.recommend(scored["customer_id"].tolist(), k=k, exclude_seen=False)
    top = recs.sort_values(["user_id", "rank"]).groupby("user_id")["item_id"].agg(list)
    scored["recommendations"] = scored["customer_id"].map(top).map(lambda ids: json.dumps(ids or []))
    scored["reasons"] = scored["reasons"].map(lambda r: json.dumps(r, default=str))
    scored["as_of"] = as_of.date().isoformat()
    scored["churn_model_version"] = champion_version(ws, registry.CHURN)
    scored["recommender_model_version"] = champion_version(ws, registry.RECOMMENDER)
    # the next best action: the uplift champion when registered, else the rules (flagged in nba_source)
    from training import next_best_action as nba

    model, version = nba.uplift_champion(ws)
    campaigns = ws.read_table("campaigns") if ws.has_table("campaigns") else None
    scored = nba.for_customers(scored, frame, model, campaigns, version if model is not None else None)
    return scored[OUTPUT_COLUMNS]


def manifest_path(out_dir: Path) -> Path:
    """The manifest of the published run: which run, how many rows, each file's size and SHA-256."""
    return out_dir / RUNS / CURRENT / MANIFEST


def _write_run(scores: pd.DataFrame, folder: Path) -> None:
    scores.to_parquet(folder / SCORES_PARQUET, index=False)
    scores.to_csv(folder / SCORES_CSV, index=False)
    files = {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
             for name in (SCORES_PARQUET, SCORES_CSV)}
    manifest = {"written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "rows": int(len(scores)), "files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


def check_outputs(out_dir: Path) -> dict:
    """The published run's manifest, after checking that the files read through the fixed names match it.

    Raises ValueError naming the file whose size or hash differs (a file replaced by hand, a broken disk).
    """
    manifest = json.loads(manifest_path(out_dir).read_text())
    manifest["run"] = os.path.basename(os.readlink(out_dir / RUNS / CURRENT))
    for name, expected in manifest["files"].items():
        path = out_dir / name
        if path.stat().st_size != expected["bytes"] or file_sha256(path) != expected["sha256"]:
            raise ValueError(f"{path}: does not match run {manifest['run']} ({manifest_path(out_dir)})")
    return manifest


def write_outputs(scores: pd.DataFrame, out_dir: Path, db_url: str | None = None, table: str = "crmml_scores") -> dict:
    """Publish Parquet and CSV as one run (see the module docstring); the database table in one transaction."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run = publish_version(out_dir / RUNS, out_dir / RUNS / CURRENT, lambda folder: _write_run(scores, folder),
                          staging_in=out_dir, staging_prefix=STAGING_PREFIX)
    for name in (SCORES_PARQUET, SCORES_CSV):  # fixed names, made once (plain files of older runs replaced)
        link, target = out_dir / name, f"{RUNS}/{CURRENT}/{name}"
        if not (link.is_symlink() and os.readlink(link) == target):
            switch_link(link, target)
    parquet, csv = out_dir / SCORES_PARQUET, out_dir / SCORES_CSV
    written = {"rows": int(len(scores)), "parquet": str(parquet), "csv": str(csv), "run": run.name}
    if db_url:
        write_table(scores, db_url, table)
        written["table"] = f"{table} @ {_redacted(db_url)}"
    return written


def write_table(scores: pd.DataFrame, db_url: str, table: str) -> None:
    """Replace ``table`` atomically: load a staging table, then drop-and-rename inside one transaction."""
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    staging = f"{table}__staging"
    with engine.begin() as conn:
        scores.to_sql(staging, conn, if_exists="replace", index=False)
    with engine.begin() as conn:  # readers see the old table until this commits
        conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}"'))
        conn.execute(sa.text(f'ALTER TABLE "{staging}" RENAME TO "{table}"'))
    engine.dispose()


def _redacted(url: str) -> str:
    import sqlalchemy as sa

    return sa.engine.make_url(url).render_as_string(hide_password=True)


def score(workspace: Workspace, k: int = 10, db_url: str | None = None, table: str = "crmml_scores",
          as_of=None, engine: str = "duckdb") -> dict:
    scores = score_frame(workspace, k=k, as_of=as_of, engine=engine)
    summary = write_outputs(scores, workspace.outputs_dir, db_url=db_url, table=table)
    summary["risk_tiers"] = scores["risk_tier"].value_counts().to_dict()
    summary["as_of"] = scores["as_of"].iloc[0] if len(scores) else None
    return summary
