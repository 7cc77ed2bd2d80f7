"""Rolling-origin evaluation: a model against every baseline at N cutoffs, summarised and graded.

The cutoffs are ``features.dates.rolling_cutoffs``: the newest labelled one (``newest_labelled_cutoff``)
and every ``every_days`` back from it. At each cutoff the model's own single-cutoff protocol runs
unchanged, so training stays strictly before the cutoff:

* churn: ``training.churn.evaluate_protocol`` (model, BG/NBD, RFM, recency);
* recommender: ``training.recommender.evaluate_time_split`` with every generator of the model alone
  plus popularity as baselines (:func:`recommender_baselines`: taken from the model's parameters, so
  a generator added to the recommender is evaluated without an edit here).

Each cutoff gives ``{view: {scorer: {metric: value}}}`` (churn has the one view ``all``; the
recommender ``all`` and ``new``); :func:`summarize` adds mean ± sd per scorer and metric, and
``training.grade.grade`` grades the model with its rule (``training.grade.RULES``).

Use cases: :func:`evaluate_churn_rolling` / :func:`evaluate_recommender_rolling` run the protocol and
return a :class:`RollingResult`; :func:`write` puts its JSON at :func:`rolling_json` and its plot in
:func:`rolling_plots` (read by ``crmml report``); :func:`log_rolling` logs it into a registry run
(per-cutoff metrics as steps 0..N-1, oldest first; mean and sd; the grade as a tag; JSON and plot as
artifacts); :func:`run_rolling` does all three, in one MLflow run of its own (what ``crmml evaluate
... --cutoffs N`` calls). ``crmml train`` grades its backtest with the same code
(``training.churn_training`` / ``training.recommender_training``).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from features import dates
from features.numeric import finite_or_none
from features.workspace import Workspace, atomic_write, atomic_write_json
from training import registry
from training.grade import GRADE_CUTOFFS_TAG, GRADE_REASON_TAG, GRADE_TAG, RULES, Grade, grade
from training.names import CHURN, RECOMMENDER

Progress = Callable[[str], None]
#: the prefix of every MLflow metric :func:`log_rolling` writes (readers of single evaluations skip it)
METRIC_PREFIX = "rolling"
KINDS = {CHURN: "churn", RECOMMENDER: "recommender"}
#: the metrics drawn per cutoff (view, metric, title) for each model
PLOTTED = {
    CHURN: (("all", "auc", "ROC-AUC (higher is better)"), ("all", "brier", "Brier score (lower is better)")),
    RECOMMENDER: (("all", "ndcg@10", "nDCG@10, all purchases"), ("new", "ndcg@10", "nDCG@10, items new to the customer")),
}


def _quiet(msg: str) -> None:
    pass


def rolling_json(reports_dir: str | Path, model_name: str) -> Path:
    """Where :func:`write` puts the rolling evaluation of ``model_name`` (``reports/rolling_<kind>.json``)."""
    return Path(reports_dir) / f"rolling_{KINDS[model_name]}.json"


def rolling_plots(reports_dir: str | Path, model_name: str) -> Path:
    """The folder where :func:`write` puts the per-cutoff plot(s) of ``model_name``."""
    return Path(reports_dir) / f"rolling_{KINDS[model_name]}_plots"


@dataclass
class RollingResult:
    """One rolling-origin evaluation: per-cutoff metrics, their summary and the grade."""

    model_name: str
    cutoffs: list[str]  # evaluated, oldest first
    every_days: int
    settings: dict  # horizon/window, k, tune, ...
    per_cutoff: list[dict]  # {"cutoff", "metrics": {view: {scorer: {metric: v}}}, ...details}
    summary: dict  # {view: {scorer: {metric: {"mean", "sd", "n"}}}}
    grade: Grade
    skipped: list[dict] = field(default_factory=list)  # {"cutoff", "reason"}
    seconds: float = 0.0
    evaluations: list = field(default_factory=list)  # churn: the Evaluation of each cutoff (not in the JSON)

    def to_json(self) -> dict:
        return {
            "model_name": self.model_name,
            "kind": KINDS[self.model_name],
            "cutoffs": self.cutoffs,
            "every_days": self.every_days,
            "settings": self.settings,
            "per_cutoff": [_clean(c) for c in self.per_cutoff],
            "summary": _clean(self.summary),
            "grade": _clean(self.grade.to_dict()),
            "skipped": self.skipped,
            "seconds": round(self.seconds, 1),
        }

    def scorers(self, view: str = "all") -> list[str]:
        """Model first, then the baselines in the order of the first cutoff."""
        names = list(dict.fromkeys(n for c in self.per_cutoff for n in c["metrics"].get(view, {})))
        return sorted(names, key=lambda n: n != "model")


def _clean(obj):
    """JSON-safe: non-finite floats become None, numpy scalars Python ones."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "item"):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def summarize(per_cutoff: list[dict]) -> dict:
    """Mean and sample standard deviation over the cutoffs of every view, scorer and metric:
    ``{view: {scorer: {metric: {"mean", "sd", "n"}}}}`` (``sd`` is None with one cutoff; non-finite
    values are left out and counted in ``n`` only when finite)."""
    values: dict = {}
    for cut in per_cutoff:
        for view, scorers in cut["metrics"].items():
            for scorer, metrics in scorers.items():
                for metric, v in metrics.items():
                    f = finite_or_none(v) if not isinstance(v, bool) else None
                    slot = values.setdefault(view, {}).setdefault(scorer, {}).setdefault(metric, [])
                    if f is not None:
                        slot.append(f)
    return {
        view: {
            scorer: {
                metric: {"mean": statistics.fmean(v) if v else None,
                         "sd": statistics.stdev(v) if len(v) > 1 else None, "n": len(v)}
                for metric, v in metrics.items()
            }
            for scorer, metrics in scorers.items()
        }
        for view, scorers in values.items()
    }


def _graded(model_name: str, per_cutoff: list[dict]) -> Grade:
    """The grade of the ``all`` view under the model's rule."""
    return grade({c["cutoff"]: c["metrics"].get("all", {}) for c in per_cutoff}, RULES[model_name])


def _cutoffs(newest, n: int, every_days: int) -> list[pd.Timestamp]:
    return dates.rolling_cutoffs(newest, n, every_days)


# ---------------------------------------------------------------------------------------------- churn
def evaluate_churn_rolling(ws: Workspace, n_cutoffs: int, every_days: int | None = None, horizon: int = 90,
                           tune: bool = True, n_trials: int = 10, step_days: int = 30,
                           keep_evaluations: bool = False, model_kwargs: dict | None = None,
                           progress: Progress | None = None, sample_customers: int | None = None) -> RollingResult:
    """``training.churn.evaluate_protocol`` at each of ``n_cutoffs`` cutoffs every ``every_days`` (default:
    the horizon) back from the newest labelled one. A cutoff without enough history before it is
    skipped with its reason; none evaluated raises ``ValueError``. ``sample_customers``: as
    ``evaluate_protocol`` (None: its default; 0: every customer).

    The metrics need the probabilities only: the customers are scored with reasons, CLV and SHAP
    contributions (``evaluate_protocol(details=True)``) only with ``keep_evaluations`` (the backtest of
    ``crmml train churn`` reports its newest evaluation)."""
    from training import churn

    say = progress or _quiet
    started = time.perf_counter()
    every = int(every_days or horizon)
    cuts = _cutoffs(dates.newest_labelled_cutoff(dates.workspace_as_of(ws), horizon), n_cutoffs, every)
    per_cutoff, skipped, evaluations = [], [], []
    for i, c in enumerate(cuts, 1):
        say(f"cutoff {i}/{len(cuts)}: {c.date()}")
        try:
            ev = churn.evaluate_protocol(ws, c, horizon_days=horizon, tune=tune, n_trials=n_trials,
                                         step_days=step_days, model_kwargs=model_kwargs,
                                         progress=lambda m, i=i: say(f"  [{i}/{len(cuts)}] {m}"),
                                         details=keep_evaluations,
                                         **({} if sample_customers is None
                                            else {"sample_customers": sample_customers or None}))
        except ValueError as exc:
            skipped.append({"cutoff": str(c.date()), "reason": str(exc)})
            say(f"  skipped {c.date()}: {exc}")
            continue
        per_cutoff.append({
            "cutoff": str(c.date()),
            "metrics": {"all": {name: dict(m) for name, m in ev.metrics.items()}},
            "n_customers": int(len(ev.y)),
            "churn_rate": float(ev.y.mean()),
            "train_cutoffs": [str(pd.Timestamp(t).date()) for t in ev.train_cutoffs],
            "timings_s": dict(ev.timings),
        })
        if keep_evaluations:
            evaluations.append(ev)
    if not per_cutoff:
        raise ValueError("no cutoff could be evaluated: " + "; ".join(f"{s['cutoff']}: {s['reason']}" for s in skipped))
    return RollingResult(
        model_name=CHURN, cutoffs=[c["cutoff"] for c in per_cutoff], every_days=every,
        settings={"horizon_days": horizon, "tune": tune, "n_trials": n_trials if tune else 0, "step_days": step_days},
        per_cutoff=per_cutoff, summary=summarize(per_cutoff), grade=_graded(CHURN, per_cutoff), skipped=skipped,
        seconds=time.perf_counter() - started, evaluations=evaluations,
    )


# ---------------------------------------------------------------------------------------------- recommender
def recommender_baselines(params: dict | None = None) -> tuple[str, ...]:
    """Every generator of a ``Recommender`` with ``params`` (each evaluated alone), plus popularity."""
    from training.recommender import Recommender

    model = Recommender(**(params or {}))
    return tuple(dict.fromkeys((*model.generators, "popular")))


def evaluate_recommender_rolling(ws: Workspace, n_cutoffs: int, every_days: int | None = None, window: int = 90,
                                 k: int = 10, tune: bool = False, params: dict | None = None,
                                 inputs: tuple | None = None, progress: Progress | None = None) -> RollingResult:
    """``training.recommender.evaluate_time_split`` at each of ``n_cutoffs`` cutoffs every ``every_days``
    (default: the window) back from the newest full window, with :func:`recommender_baselines`.
    ``inputs``: ``training.recommender_inputs.load_inputs(ws)`` when the caller has already read them."""
    from training.recommender import evaluate_time_split
    from training.recommender_inputs import load_inputs, newest_window_cutoff

    say = progress or _quiet
    started = time.perf_counter()
    every = int(every_days or window)
    interactions, items, users = inputs if inputs is not None else load_inputs(ws)
    newest = newest_window_cutoff(interactions, window)
    if newest is None:
        raise ValueError("the interactions have no timestamps: no cutoffs to evaluate at")
    params = {"show_progress": False, **(params or {})}
    baselines = recommender_baselines(params)
    per_cutoff, skipped = [], []
    cuts = _cutoffs(newest, n_cutoffs, every)
    for i, c in enumerate(cuts, 1):
        say(f"cutoff {i}/{len(cuts)}: {c.date()} (fit before it, test on the next {window} days)")
        try:
            res = evaluate_time_split(interactions, c, window_days=window, k=k, items=items, users=users,
                                      params=params, baselines=baselines, tune=tune)
        except ValueError as exc:
            skipped.append({"cutoff": str(c.date()), "reason": str(exc)})
            say(f"  skipped {c.date()}: {exc}")
            continue
        per_cutoff.append({"metrics": {"all": res.pop("all"), "new": res.pop("new")}, **res})
    if not per_cutoff:
        raise ValueError("no cutoff could be evaluated: " + "; ".join(f"{s['cutoff']}: {s['reason']}" for s in skipped))
    return RollingResult(
        model_name=RECOMMENDER, cutoffs=[c["cutoff"] for c in per_cutoff], every_days=every,
        settings={"window_days": window, "k": k, "tune": tune, "baselines": list(baselines)},
        per_cutoff=per_cutoff, summary=summarize(per_cutoff), grade=_graded(RECOMMENDER, per_cutoff),
        skipped=skipped, seconds=time.perf_counter() - started,
    )


def time_split_result(result: RollingResult, index: int = -1) -> dict:
    """One cutoff of a recommender's rolling evaluation (default: the newest) in the form of
    ``training.recommender.evaluate_time_split``'s result."""
    cut = dict(result.per_cutoff[index])
    return {**cut.pop("metrics"), **cut}


# ---------------------------------------------------------------------------------------------- outputs
def series(result: RollingResult, view: str, metric: str) -> dict[str, list[float | None]]:
    """``{scorer: [value at each cutoff]}`` of one view and metric (None where absent)."""
    return {name: [finite_or_none(c["metrics"].get(view, {}).get(name, {}).get(metric)) for c in result.per_cutoff]
            for name in result.scorers(view)}


def figure(result: RollingResult):
    """Per-cutoff lines of the model (thick, blue) and every baseline, one panel per metric of
    :data:`PLOTTED`; the grade in the title. A matplotlib ``Figure`` (Agg canvas, no pyplot)."""
    from matplotlib.figure import Figure

    panels = PLOTTED[result.model_name]
    fig = Figure(figsize=(5.4 * len(panels), 4.2), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    x = [pd.Timestamp(c) for c in result.cutoffs]
    palette = ["#f59e0b", "#10b981", "#a855f7", "#ef4444", "#64748b", "#06b6d4", "#84cc16", "#ec4899", "#92400e",
               "#0f766e", "#facc15", "#1e293b"]
    # one colour per scorer across the panels (a view may lack a baseline, e.g. buy_again on new items)
    names = list(dict.fromkeys(n for view, _, _ in panels for n in result.scorers(view) if n != "model"))
    colour = {"model": "#2563eb", **{n: palette[i % len(palette)] for i, n in enumerate(names)}}
    handles = {}
    for ax, (view, metric, title) in zip(axes, panels):
        lines = series(result, view, metric)
        for name, ys in sorted(lines.items(), key=lambda kv: kv[0] == "model"):
            pts = [(xx, yy) for xx, yy in zip(x, ys) if yy is not None]
            if not pts:
                continue
            is_model = name == "model"
            handles[name] = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=5 if is_model else 3,
                                    lw=2.6 if is_model else 1.3, color=colour[name], label=name,
                                    zorder=3 if is_model else 2)[0]
        ax.set_title(title, loc="left", fontsize=10, fontweight="bold")
        ax.set_xticks(x, [d.strftime("%Y-%m-%d") for d in x], rotation=30, ha="right", fontsize=8)
        ax.grid(True, color="#e2e8f0", lw=0.8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    order = ["model", *names]
    axes[-1].legend([handles[n] for n in order if n in handles], [n for n in order if n in handles], fontsize=8,
                    frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"{result.model_name} at {len(x)} cutoffs every {result.every_days} days: grade "
                 f"{result.grade.letter}", x=0.01, ha="left", fontsize=11, fontweight="bold")
    return fig


def write(result: RollingResult, reports_dir: str | Path) -> dict:
    """Write :func:`rolling_json` and the plot ``per_cutoff.png`` in :func:`rolling_plots`;
    returns ``{"json": path, "figures": {"per_cutoff": path}}``."""
    json_path = rolling_json(reports_dir, result.model_name)
    fig_dir = rolling_plots(reports_dir, result.model_name)
    fig_dir.mkdir(parents=True, exist_ok=True)
    fig = figure(result)
    png = fig_dir / "per_cutoff.png"
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png"))
    atomic_write_json(json_path, result.to_json())
    return {"json": json_path, "figures": {"per_cutoff": png}}


def grade_tags(result: RollingResult) -> dict[str, str]:
    """The grade as tags (of the run and of a registered version)."""
    return {GRADE_TAG: result.grade.letter, GRADE_REASON_TAG: result.grade.reason,
            GRADE_CUTOFFS_TAG: ",".join(result.cutoffs)}


def log_rolling(run: registry.TrainingRun, result: RollingResult, written: dict, prefix: str = METRIC_PREFIX) -> None:
    """Into an open registry run: each cutoff's metrics as steps 0..N-1 (oldest first) under
    ``<prefix>.<view>.<scorer>.<metric>``, the mean and sd under ``<prefix>.mean.*`` / ``<prefix>.sd.*``,
    the grade as tags, the JSON and the plot as artifacts."""
    for step, cut in enumerate(result.per_cutoff):
        for view, scorers in cut["metrics"].items():
            for scorer, metrics in scorers.items():
                run.log_metrics(metrics, prefix=f"{prefix}.{view}.{scorer}", step=step)
    for view, scorers in result.summary.items():
        for scorer, metrics in scorers.items():
            for stat in ("mean", "sd"):
                run.log_metrics({m: s[stat] for m, s in metrics.items()}, prefix=f"{prefix}.{stat}.{view}.{scorer}")
    run.log_metrics({"gap.mean": result.grade.mean_gap}, prefix=prefix)
    run.set_tags(grade_tags(result))
    run.log_artifact(written["json"], prefix)
    for path in written["figures"].values():
        run.log_artifact(path, "plots")


def run_rolling(ws: Workspace, model_name: str, n_cutoffs: int, every_days: int | None = None, mlflow: bool = True,
                progress: Progress | None = None, **options) -> tuple[RollingResult, dict, str | None]:
    """``crmml evaluate <model> --cutoffs N``: evaluate, write (:func:`write`) and, with ``mlflow``, log one
    parent run ``<model>-rolling-<N>`` (not registered). ``options`` go to the model's evaluate function.
    Returns (result, written paths, run id or None)."""
    evaluate = {CHURN: evaluate_churn_rolling, RECOMMENDER: evaluate_recommender_rolling}[model_name]
    result = evaluate(ws, n_cutoffs, every_days, progress=progress, **options)
    written = write(result, ws.reports_dir)
    run_id = None
    if mlflow:
        with registry.training_run(
            ws, model_name, run_name=f"{KINDS[model_name]}-rolling-{len(result.cutoffs)}",
            params={"cutoffs": ",".join(result.cutoffs), "every_days": result.every_days, **result.settings},
            lineage={"cutoffs": result.cutoffs, "every_days": result.every_days},
            tags={"kind": "rolling_evaluation"},
        ) as run:
            log_rolling(run, result, written)
        run_id = run.run_id
    return result, written, run_id


__all__ = [
    "METRIC_PREFIX", "RollingResult", "evaluate_churn_rolling",
    "evaluate_recommender_rolling", "figure", "time_split_result", "grade_tags", "log_rolling", "recommender_baselines",
    "rolling_json", "rolling_plots", "run_rolling", "series", "summarize", "write",
]
