"""The promotion use case: put a challenger through the gate, evaluated by its own model's code.

``training.registry.promote`` knows nothing of the models: it takes an ``evaluate(model_uri) ->
metrics`` function. This module supplies it: :data:`GATE_EVALUATORS` maps each registered model
to the factory in its training module (``training.churn.gate_evaluator`` /
``training.recommender.gate_evaluator``) that scores a model URI on the newest window of a
workspace. ``crmml models promote|compare --evaluate`` and the pipeline's ``promote`` step call
:func:`gate_evaluator`; the pipeline's step is :func:`promote_challengers`.
"""

from __future__ import annotations

from typing import Callable

from features.workspace import Workspace
from training import churn, recommender, registry, uplift_training
from training.names import CHALLENGER, CHAMPION, CHURN, MODEL_NAMES, RECOMMENDER, UPLIFT

#: registered model -> factory(workspace) returning evaluate(model_uri) -> {metric: value, "window": date}
GATE_EVALUATORS: dict[str, Callable[[Workspace], registry.Evaluate]] = {
    CHURN: churn.gate_evaluator,
    RECOMMENDER: recommender.gate_evaluator,
    UPLIFT: uplift_training.gate_evaluator,
}


def gate_evaluator(ws: Workspace, name: str) -> tuple[registry.Evaluate | None, str]:
    """(evaluate function or None, note): the newest-window evaluator of model ``name`` on ``ws``."""
    factory = GATE_EVALUATORS.get(name)
    if factory is None:
        return None, f"no evaluator is known for {name}"
    return factory(ws), f"evaluated now with {factory.__module__}.{factory.__qualname__}"


def promote_challengers(ws: Workspace, names: tuple[str, ...] = MODEL_NAMES) -> dict:
    """Put each new challenger through the gate against its champion, both evaluated on the newest window.

    Returns ``{name: {"decision", "champion", "challenger", "reasons"}}``; a model whose challenger is
    its champion (a first version is champion at once) gets ``decision="initial"``.
    """
    mlc = registry.client(ws)
    out = {}
    for name in names:
        champion = registry.alias_version(mlc, name, CHAMPION)
        challenger = registry.alias_version(mlc, name, CHALLENGER)
        if challenger in (None, champion):  # a first version is champion at once
            out[name] = {"decision": "initial", "champion": str(champion)}
            continue
        evaluate, _ = gate_evaluator(ws, name)
        decision = registry.promote(ws, name, evaluate=evaluate)
        out[name] = {"decision": decision.decision,
                     "champion": str(registry.alias_version(mlc, name, CHAMPION)),
                     "challenger": str(challenger), "reasons": decision.reasons}
    return out


__all__ = ["GATE_EVALUATORS", "gate_evaluator", "promote_challengers"]
