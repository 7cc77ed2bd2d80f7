"""The next best action of one customer, for ``GET /customers/{id}/next-best-action``.

One :class:`NextBestActions` belongs to each :class:`~serving.state.ServingState` (a reload builds a
new one): on the first request it resolves the ``crmml-uplift`` champion in the registry and loads
it; afterwards each request is one row of the features the service already holds (the churn
scoring frame at the as-of date) through the uplift model and ``training.next_best_action``.
Without an uplift champion (or when it cannot be loaded) the answer is the rule-based suggested
action of the churn record, flagged ``source: "rules"`` with the reason.
"""

from __future__ import annotations

import json
import threading

import pandas as pd

from training import next_best_action as nba
from training.names import CHURN


class UnknownCustomer(KeyError):
    """No churn record for this id at the as-of date."""


class NextBestActions:
    def __init__(self):
        self._lock = threading.Lock()
        self._ready = False
        self.model = None
        self.version: str | None = None
        self.reason: str | None = None
        self.costs: dict[str, float] = {}
        self._rows: dict[str, int] = {}
        self._frame: pd.DataFrame | None = None

    def _load(self, state) -> None:
        with self._lock:
            if self._ready:
                return
            ws = state.data.ws
            try:
                self.model, detail = nba.uplift_champion(ws)
            except Exception as exc:  # a broken registry or artifact: answer with the rules, say why
                self.model, detail = None, f"the uplift model could not be loaded ({type(exc).__name__}: {exc})"
            if self.model is None:
                self.reason = detail
            else:
                self.version = detail
                campaigns = ws.read_table("campaigns") if ws.has_table("campaigns") else None
                self.costs = nba.action_costs(campaigns, self.model.actions_)
                frame = state.data.scoring_frame(int(state.models[CHURN].impl.horizon_days))
                self._frame = frame
                self._rows = {cid: i for i, cid in enumerate(frame["customer_id"].astype(str))}
            self._ready = True

    def answer(self, state, customer_id: str) -> dict:
        """The JSON body (``schemas.NextBestAction``) for ``customer_id``; UnknownCustomer if not known."""
        raw = state.store.get("churn", customer_id)
        if raw is None:
            raise UnknownCustomer(customer_id)
        record = json.loads(raw)
        self._load(state)
        base = {"customer_id": customer_id, "as_of": state.as_of}
        if self.model is None or customer_id not in self._rows:
            why = self.reason or "no features for this customer at the as-of date"
            return {**base, "action": record.get("suggested_action") or "none", "source": "rules",
                    "expected_value": None, "uplift": None,
                    "reason": f"rule-based ({why}): {record.get('action_text') or record.get('suggested_action')}",
                    "alternatives": [], "uplift_model_version": None}
        row = self._frame.iloc[[self._rows[customer_id]]]
        uplift = self.model.predict_frame(row).drop(columns=["churn_risk"])
        value = nba.value_if_retained(row.assign(clv_12m=record.get("clv_12m")))
        out = nba.next_best_actions(uplift, value, self.costs).iloc[0]
        alternatives = [
            {"action": a, "uplift": float(uplift[f"uplift_{a}"].iloc[0]), "cost": float(self.costs[a]),
             "expected_value": float(out[f"ev_{a}"])}
            for a in self.model.actions_
        ]
        alternatives.sort(key=lambda d: -d["expected_value"])
        return {**base, "action": str(out["next_best_action"]), "source": "uplift model",
                "expected_value": float(out["nba_expected_value"]), "uplift": float(out["nba_uplift"]),
                "value_if_retained": float(value[0]), "reason": str(out["nba_reason"]),
                "alternatives": alternatives, "uplift_model_version": self.version}
