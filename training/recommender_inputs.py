"""What the recommender reads from a workspace, and the newest window it is evaluated on.

Interactions come from the workspace's ``interactions`` table (generic ratings/clicks) when it has
one, else from its ``events`` with the weights :data:`EVENT_WEIGHTS` (returns are left out:
returning a unit of a wholesale line is not a dislike of the item). The use cases
(``training.recommender_training``) and the promotion gate (``training.recommender.gate_evaluator``)
both read through here, so that training and the gate see the same data.
"""

from __future__ import annotations

import pandas as pd

from features.dates import as_of_date, newest_labelled_cutoff
from features.interactions import load_interactions
from features.workspace import Workspace

#: event weights of the recommender's interactions (relative to a purchase)
EVENT_WEIGHTS = {"view": 0.2, "cart": 0.6, "purchase": 1.0}


def load_inputs(ws: Workspace) -> tuple[pd.DataFrame, pd.DataFrame | None, pd.DataFrame | None]:
    """(interactions, items or None, users or None) of a workspace."""
    interactions = load_interactions(ws, EVENT_WEIGHTS)
    items = ws.read_table("items") if ws.has_table("items") else None
    users = ws.read_table("customers") if ws.has_table("customers") else None
    return interactions, items, users


def newest_window_cutoff(interactions: pd.DataFrame, window_days: int) -> pd.Timestamp | None:
    """The cutoff whose ``window_days`` test window ends with the data (``features.dates``), or None
    when the interactions carry no timestamps (nothing to split in time)."""
    if "timestamp" not in interactions.columns:
        return None
    return newest_labelled_cutoff(as_of_date(interactions["timestamp"]), window_days)


__all__ = ["EVENT_WEIGHTS", "load_inputs", "newest_window_cutoff"]
