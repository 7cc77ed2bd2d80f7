"""The insight report: one static HTML file with every plot embedded, for a shop's workspace.

``build_report(workspace, out_path=None, as_of=None) -> Path`` writes ``<workspace>/reports/report.html``
(default) plus the plots as PNG files in ``<workspace>/reports/report_files/``. The HTML embeds the same
PNGs as ``data:`` URIs, so the file alone can be mailed or opened offline: no external CSS, JavaScript,
fonts or images. ``write(...)`` does the same and returns a :class:`Report` (path, sections).

How it is built, one module per job:

- :mod:`~pipelines.report.inputs` loads what the report reads, once, each at the path its writer
  declares, into a typed :class:`~pipelines.report.inputs.ReportInputs`;
- :mod:`~pipelines.report.insight` computes from events (Pareto, cohorts, activity, repeat rates, rules);
- :mod:`~pipelines.report.evaluations` turns evaluation JSON and MLflow metrics into comparison tables;
- :mod:`~pipelines.report.plots` draws; :mod:`~pipelines.report.text` formats numbers;
- :mod:`~pipelines.report.insight_sections` and :mod:`~pipelines.report.model_sections` build the
  sections; each :class:`~pipelines.report.page.SectionSpec` declares the inputs it reads and gets only
  those, so sections do not depend on each other or on their order;
- :mod:`~pipelines.report.render` renders the Jinja template ``pipelines/templates/report.html.j2``.

Sections, in order (a section whose input is missing says so in one line): data summary; revenue Pareto
curve and value tiers; RFM segments; cohort retention; repeat-purchase and retention rates; churn risk by
segment; the churn model's backtest against its baselines (``training.churn.write_report``'s JSON and
plots); recommendation metrics against baselines; both models at the cutoffs of their rolling evaluation with
their grade (``training.rolling``'s JSON and plots); top association rules; the retention list.

``log_report(workspace, path)`` logs the HTML and its PNG folder to MLflow (the active run, else a run
named ``report`` in the workspace's tracking store).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from features.workspace import Workspace, atomic_write
from pipelines.report import inputs as report_inputs
from pipelines.report import render as page
from pipelines.report.evaluations import evaluation_views, metric_key, views_from_metrics
from pipelines.report.inputs import ReportInputs
from pipelines.report.insight import (
    cohort_retention,
    customer_revenue,
    customers_for_revenue,
    data_summary,
    dedupe_rule_pairs,
    monthly_activity,
    pareto_curve,
    prepare_events,
    repeat_rates,
    segment_summary,
    share_of_revenue,
)
from pipelines.report.campaign_sections import CAMPAIGNS
from pipelines.report.insight_sections import COHORTS, PARETO, RATES, RFM, RULES, SUMMARY
from pipelines.report.model_sections import (
    CHURN_EVALUATION,
    CHURN_RISK,
    RECOMMENDER_EVALUATION,
    RETENTION,
    ROLLING_EVALUATION,
)
from pipelines.report.page import Section, SectionSpec
from pipelines.report.plots import squarify
from pipelines.report.text import reason_text

REPORT_NAME = "report.html"


def report_path(ws: Workspace) -> Path:
    """Where ``crmml report`` writes the page by default."""
    return ws.reports_dir / REPORT_NAME

SECTIONS: tuple[SectionSpec, ...] = (  # the page's order; no section reads another's results
    SUMMARY, PARETO, RFM, COHORTS, RATES, CHURN_RISK, CHURN_EVALUATION, RECOMMENDER_EVALUATION, ROLLING_EVALUATION,
    RULES, RETENTION, CAMPAIGNS,
)


@dataclass
class Report:
    """A written report: the HTML file, its PNG folder and the sections it shows."""

    path: Path
    sections: list[Section]

    @property
    def files_dir(self) -> Path:
        return report_files(self.path)

    @property
    def images(self) -> int:
        return sum(len(s.plots) for s in self.sections if not s.missing)

    @property
    def missing(self) -> list[str]:
        """Titles of the sections whose input was absent."""
        return [s.title for s in self.sections if s.missing]


def _workspace(workspace) -> Workspace:
    return workspace if isinstance(workspace, Workspace) else Workspace(workspace)


def report_files(path: str | Path) -> Path:
    """The PNG folder that belongs to a report HTML file (``<stem>_files/`` beside it)."""
    path = Path(path)
    return path.parent / f"{path.stem}_files"


def collect(workspace, as_of=None) -> tuple[ReportInputs, list[Section]]:
    """Load the inputs once and build every section (no file is written)."""
    loaded = report_inputs.load(_workspace(workspace), as_of)
    return loaded, [spec.run(loaded) for spec in SECTIONS]


def write(workspace, out_path: str | Path | None = None, as_of=None) -> Report:
    """Write the HTML report (plots embedded) and its PNG folder; returns what was written."""
    ws = _workspace(workspace)
    out = Path(out_path) if out_path is not None else report_path(ws)
    out = out.resolve()
    loaded, sections = collect(ws, as_of)
    files = report_files(out)
    files.mkdir(parents=True, exist_ok=True)
    written = set()
    for section in sections:
        for i, plot in enumerate(section.plots):
            name = plot.name if plot.name not in written else f"{plot.name}_{i}"
            written.add(name)
            plot.name = name
            plot.path = files / f"{name}.png"
            atomic_write(plot.path, lambda tmp, data=plot.png: tmp.write_bytes(data))
    for stale in files.glob("*.png"):
        if stale.stem not in written:
            stale.unlink(missing_ok=True)
    sources = [r.get("source") for r in ws.ingestions() if isinstance(r, dict)]
    text = page.render(sections, summary=loaded.summary, as_of=loaded.as_of, workspace_root=ws.root,
                       sources=sources, files_dir=files.name)
    atomic_write(out, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return Report(out, sections)


def build_report(workspace, out_path: str | Path | None = None, as_of=None) -> Path:
    """Write the HTML report (plots embedded) and its PNG folder ``<stem>_files/``; returns the HTML path."""
    return write(workspace, out_path, as_of).path


def log_report(workspace, path: str | Path, artifact_path: str = "report") -> str:
    """Log the report HTML and its PNG folder to MLflow; returns the run id.

    Into the active run when there is one, else into a new run named ``report`` in the
    workspace's tracking store (experiment ``training.names.EXPERIMENT``)."""
    import mlflow

    from training import registry

    ws = _workspace(workspace)
    path = Path(path)
    files = report_files(path)

    def log() -> str:
        mlflow.log_artifact(str(path), artifact_path)
        if files.is_dir() and any(files.iterdir()):
            mlflow.log_artifacts(str(files), f"{artifact_path}/{files.name}")
        return mlflow.active_run().info.run_id

    if mlflow.active_run() is not None:
        return log()
    registry.configure(ws)
    experiment_id = registry.ensure_experiment(ws)
    with mlflow.start_run(run_name="report", experiment_id=experiment_id, tags={"crmml.kind": "report"}):
        return log()


__all__ = [
    "Report", "SECTIONS", "build_report", "collect", "write", "log_report", "report_files", "prepare_events",
    "data_summary", "customer_revenue", "pareto_curve", "share_of_revenue", "customers_for_revenue",
    "cohort_retention", "monthly_activity", "repeat_rates", "dedupe_rule_pairs", "squarify", "segment_summary",
    "evaluation_views", "views_from_metrics", "metric_key", "reason_text",
]
