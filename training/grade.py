"""The product grade of a model: A, B or C against its best baseline over the cutoffs of a rolling-origin
evaluation (``training.rolling``). One rule, :func:`grade`, for every model; each model states its metric
and margin in a :class:`GradeRule` (:data:`RULES`).

The grade is shown by ``crmml evaluate ... --cutoffs N``, written into the rolling evaluation's JSON
(and so the report), set as the tag ``grade`` on the MLflow run and on the registered model version
(``crmml train``: the grade of its backtest cutoffs), served in ``/metadata``, and read by the promotion
gate (``training.registry.GatePolicy.refused_grades``: a challenger graded C is refused unless forced).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from features.numeric import finite_or_none
from training.names import CHURN, RECOMMENDER

GRADES = ("A", "B", "C")
#: tags of the evaluation's MLflow run and of the registered model version (``/metadata`` and the gate read GRADE_TAG)
GRADE_TAG = "grade"
GRADE_REASON_TAG = "grade.reason"
GRADE_CUTOFFS_TAG = "grade.cutoffs"


@dataclass(frozen=True)
class GradeRule:
    """What "ahead of the best baseline" means for one model.

    ``metric`` is compared with the best baseline's at each cutoff (``higher_is_better`` says which way
    is better); grade A needs a gap of at least ``margin`` at every cutoff. ``guard`` (optional) is a
    second metric that must not be worse than the best baseline's value of it by more than
    ``guard_tolerance`` (``guard_higher_is_better`` says which way is better)."""

    metric: str
    margin: float
    higher_is_better: bool = True
    guard: str | None = None
    guard_higher_is_better: bool = False
    guard_tolerance: float = 0.0

    def describe(self) -> str:
        """The rule in one sentence (shown beside every grade)."""
        guard = ""
        if self.guard:
            worse = "lower" if self.guard_higher_is_better else "higher"
            tol = f" by more than {self.guard_tolerance:g}" if self.guard_tolerance else ""
            guard = f", and {self.guard} never {worse} than the best baseline's{tol}"
        return (f"A: {self.metric} ahead of the best baseline by at least {self.margin:g} at every cutoff{guard}; "
                f"B: ahead on average over the cutoffs" + (f" ({self.guard} not worse on average)" if self.guard else "")
                + "; C: otherwise")


#: the rule of each registered model: churn ROC-AUC (margin 0.005) with Brier as guard; recommender nDCG@10
RULES: dict[str, GradeRule] = {
    CHURN: GradeRule("auc", 0.005, True, guard="brier", guard_higher_is_better=False, guard_tolerance=0.0),
    RECOMMENDER: GradeRule("ndcg@10", 0.005, True),
}


@dataclass
class Grade:
    """A grade with its one-line reason, the rule it applied and the gaps it saw at each cutoff."""

    letter: str  # A | B | C
    reason: str  # one line
    rule: str  # GradeRule.describe()
    metric: str
    mean_gap: float | None  # mean over the cutoffs of model - best baseline (signed so that > 0 is better)
    cutoffs: list[dict] = field(default_factory=list)  # per cutoff: best baseline, values, gaps, ok

    def to_dict(self) -> dict:
        return asdict(self)


def _gap(model: float, other: float, higher: bool) -> float:
    """How much better ``model`` is than ``other`` (positive = better)."""
    return (model - other) if higher else (other - model)


def _best(scorers: dict, metric: str, model: str, higher: bool) -> tuple[str | None, float | None]:
    """(name, value) of the best baseline on ``metric`` among ``scorers`` other than ``model``."""
    vals = {name: finite_or_none(m.get(metric)) for name, m in scorers.items() if name != model}
    vals = {k: v for k, v in vals.items() if v is not None}
    if not vals:
        return None, None
    name = (max if higher else min)(vals, key=vals.get)
    return name, vals[name]


def grade(per_cutoff: dict[str, dict[str, dict[str, float]]], rule: GradeRule, model: str = "model") -> Grade:
    """Grade ``model`` against its best baseline over the cutoffs of a rolling-origin evaluation.

    ``per_cutoff`` maps each cutoff (a label) to ``{scorer: {metric: value}}``; the scorer ``model`` is
    the model, every other scorer a baseline. At each cutoff the best baseline is the best one *at that
    cutoff* on ``rule.metric`` (and, for the guard, the best one on ``rule.guard``); the gap is
    ``model - best`` (``best - model`` when lower is better), so a positive gap means the model is ahead.

    * **A**: at every cutoff the gap on ``rule.metric`` is at least ``rule.margin`` and the guard's gap
      is at least ``-rule.guard_tolerance`` (the guard is not worse than the best baseline's);
    * **B**: the mean gap on ``rule.metric`` over the cutoffs is above 0 and the guard's mean gap is at
      least ``-rule.guard_tolerance`` (ahead on average, guard not worse on average);
    * **C**: otherwise, including no cutoff, a missing model value or no baseline to compare with.
    """
    rows, gaps, guard_gaps = [], [], []
    missing = []
    for cutoff, scorers in per_cutoff.items():
        m = finite_or_none((scorers.get(model) or {}).get(rule.metric))
        best, best_v = _best(scorers, rule.metric, model, rule.higher_is_better)
        row = {"cutoff": str(cutoff), "model": m, "best_baseline": best, "baseline": best_v, "gap": None}
        if m is None or best_v is None:
            missing.append(str(cutoff))
            rows.append({**row, "ok": False})
            continue
        row["gap"] = _gap(m, best_v, rule.higher_is_better)
        gaps.append(row["gap"])
        ok = row["gap"] >= rule.margin - 1e-12
        if rule.guard:
            gm = finite_or_none((scorers.get(model) or {}).get(rule.guard))
            gbest, gbest_v = _best(scorers, rule.guard, model, rule.guard_higher_is_better)
            row.update({"guard": rule.guard, "guard_model": gm, "guard_best_baseline": gbest, "guard_baseline": gbest_v,
                        "guard_gap": None})
            if gm is None or gbest_v is None:
                missing.append(str(cutoff))
                ok = False
            else:
                row["guard_gap"] = _gap(gm, gbest_v, rule.guard_higher_is_better)
                guard_gaps.append(row["guard_gap"])
                ok = ok and row["guard_gap"] >= -rule.guard_tolerance - 1e-12
        rows.append({**row, "ok": bool(ok)})
    mean_gap = sum(gaps) / len(gaps) if gaps else None
    mean_guard = sum(guard_gaps) / len(guard_gaps) if guard_gaps else None
    n = len(rows)
    text = rule.describe()
    if not rows:
        return Grade("C", "C: no cutoff was evaluated", text, rule.metric, None, rows)
    if missing:
        return Grade("C", f"C: {rule.metric} or {rule.guard or rule.metric} of the model or of every baseline "
                          f"missing at {', '.join(missing)}", text, rule.metric, mean_gap, rows)
    worst = min(rows, key=lambda r: r["gap"])
    mean_txt = f"mean gap {mean_gap:+.4f} {rule.metric}"
    guard_ok_on_average = mean_guard is None or mean_guard >= -rule.guard_tolerance - 1e-12
    if all(r["ok"] for r in rows):
        return Grade("A", f"A: {rule.metric} ahead of the best baseline by at least {rule.margin:g} at all {n} "
                          f"cutoffs (smallest gap {worst['gap']:+.4f} at {worst['cutoff']} vs {worst['best_baseline']})"
                          + (f", {rule.guard} never worse" if rule.guard else ""), text, rule.metric, mean_gap, rows)
    failed = next(r for r in rows if not r["ok"])
    if failed["gap"] < rule.margin - 1e-12:
        why = (f"{failed['cutoff']}: {rule.metric} {failed['gap']:+.4f} vs {failed['best_baseline']}, "
               f"margin {rule.margin:g}")
    else:
        why = f"{failed['cutoff']}: {rule.guard} {failed['guard_gap']:+.4f} vs {failed['guard_best_baseline']}"
    if mean_gap > 0 and guard_ok_on_average:
        return Grade("B", f"B: ahead of the best baseline on average ({mean_txt}) but not at every cutoff ({why})",
                     text, rule.metric, mean_gap, rows)
    if mean_gap <= 0:
        return Grade("C", f"C: not ahead of the best baseline on average ({mean_txt}; {why})", text, rule.metric,
                     mean_gap, rows)
    return Grade("C", f"C: {rule.metric} ahead on average ({mean_txt}) but {rule.guard} worse than the best "
                      f"baseline's on average (by {abs(mean_guard):.4f}; {why})", text, rule.metric, mean_gap, rows)


def is_grade(value) -> bool:
    """Whether ``value`` is one of :data:`GRADES` (tags read back from the registry are strings)."""
    return isinstance(value, str) and value in GRADES


__all__ = ["GRADE_CUTOFFS_TAG", "GRADE_REASON_TAG", "GRADE_TAG", "GRADES", "Grade", "GradeRule", "RULES", "grade", "is_grade"]
