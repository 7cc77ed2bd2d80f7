"""The `crmml` command line: one entry point for every step, from raw files to a served API."""

from __future__ import annotations

import os

# before numpy/implicit load: implicit's ALS wants a single-threaded BLAS; no telemetry from libraries
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # rich shows progress; tqdm bars per artifact clutter the log

from pipelines import quiet  # noqa: E402

quiet.install()  # third-party notices out of the normal output: see pipelines/quiet.py

import typer  # noqa: E402

from pipelines.commands import campaigns, churn, data, features, models, recommender, report, run, serve  # noqa: E402

app = typer.Typer(help="crmml: churn warnings, recommendations and customer insight.", no_args_is_help=True)
train_app = typer.Typer(help="Train a model and register it as challenger.", no_args_is_help=True)
evaluate_app = typer.Typer(help="Evaluate a model against its baselines on a time split.", no_args_is_help=True)
models_app = typer.Typer(help="List, compare, promote and roll back registered models.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(evaluate_app, name="evaluate")
app.add_typer(models_app, name="models")

# Each area owns its commands in pipelines/commands/<area>.py and registers them here.
data.register(app)
features.register(app)
churn.register(train_app, evaluate_app)
recommender.register(train_app, evaluate_app)
campaigns.register(train_app, evaluate_app)
models.register(models_app)
report.register(app)
run.register(app)
serve.register(app)

if __name__ == "__main__":
    app()
