"""The campaigns section: measured effects with intervals, Qini curves of the targeting rules on
held-out campaigns, and the expected value of the next campaign under each rule.

Inputs (``ReportInputs.campaigns``): ``crmml evaluate campaign``'s JSON
(``training.campaigns.effects_json``) and ``crmml train uplift``'s held-out evaluation
(``training.uplift_training.evaluation_json``); either may be absent.
"""

from __future__ import annotations

from pipelines.report.inputs import Found
from pipelines.report.page import Section, SectionSpec, Table
from pipelines.report.plots import _png

RULE_LABELS = {"uplift": "uplift model", "churn_risk": "highest churn risk", "random": "random"}


def _ci(m: dict, fmt: str) -> str:
    return f"{format(m['effect'], fmt)} [{format(m['ci_low'], fmt)}, {format(m['ci_high'], fmt)}]"


def campaigns(campaigns: Found[dict]) -> Section:
    s = Section()
    if not campaigns.ok:
        s.missing = ("No campaign results: run `crmml evaluate campaign` (effects) and `crmml train uplift` "
                     "(targeting rules) to fill this section.")
        return s
    data, parts = campaigns.value, []
    effects = data.get("effects") or []
    if effects:
        rows = []
        for e in effects:
            m = e["metrics"]
            rows.append([e["campaign_id"], e.get("action") or "", "observational" if e["observational"] else "randomised",
                         f"{e['n_contacted']:,}", _ci(m["response"], "+.1%"), _ci(m["retained"], "+.1%"),
                         _ci(m["revenue"], "+,.2f"), f"{e['incremental_revenue']:,.0f}", f"{e['cost']:,.0f}",
                         "" if e.get("roi") is None else f"{e['roi']:+.0%}"])
        s.tables.append(Table(["campaign", "action", "design", "contacted", "response", "retention", "revenue / customer",
                               "incremental revenue", "cost", "ROI"], rows,
                              caption="Effect per contacted customer against the control group (95% intervals); "
                                      "observational: against matched non-contacted customers.",
                              numeric=[False, False, False] + [True] * 7))
        significant = [e for e in effects if e["metrics"]["retained"]["ci_low"] > 0]
        parts.append(f"{len(significant)} of {len(effects)} campaigns raised retention beyond doubt")
        if any(e["observational"] for e in effects):
            s.notes.append("Observational estimates assume: " + "; ".join(
                next(e for e in effects if e["observational"])["assumptions"]) + ".")
    uplift = data.get("uplift") or {}
    held = uplift.get("campaigns") or {}
    if held:
        from training.uplift_training import qini_figure

        s.plots.append(_png(qini_figure(held), "campaign_qini",
                            "Qini curves on the held-out campaigns: incremental retained customers per treated "
                            "customer as more customers are contacted, by targeting rule."))
        rows = []
        for cid, res in held.items():
            for rule, r in res["rules"].items():
                rows.append([cid, res["action"], RULE_LABELS.get(rule, rule), f"{r['auuc']:.4f}",
                             f"{r.get('incremental_retained_top20', float('nan')):.1f}",
                             f"{r.get('expected_value_top20', float('nan')):,.0f}",
                             "" if "true_gain_top20" not in r else f"{r['true_gain_top20']:.1f}"])
        s.tables.append(Table(["campaign", "action", "targeting rule", "AUUC", "extra retained (top 20%)",
                               "expected value (top 20%)", "extra retained, truth"], rows,
                              caption="The next campaign contacting 20% of the customers: expected extra retained "
                                      "customers and value (revenue of a retained customer x extra retained - "
                                      "contact cost), measured on held-out campaigns.",
                              numeric=[False, False, False, True, True, True, True]))
        m = uplift.get("metrics", {})
        if m.get("auuc") is not None:
            parts.append(f"uplift targeting AUUC {m['auuc']:.4f} against {m.get('auuc_churn_risk', float('nan')):.4f} "
                         f"for the highest churn risk and {m.get('auuc_random', float('nan')):.4f} at random")
    s.takeaway = ("; ".join(parts) + ".") if parts else "Campaign results."
    s.source = campaigns.source
    s.notes.append(f"From {campaigns.source}.")
    return s


CAMPAIGNS = SectionSpec("campaigns", "Campaigns: measured effects, uplift targeting and the next campaign",
                        ("campaigns",), campaigns)
