"""The dates every stage agrees on: the as-of date, the newest labelled cutoff, the training cutoffs,
the cutoffs of a rolling-origin evaluation.

A cutoff ``c`` splits time: features use events strictly before ``c``, the churn label (or the
recommender's test window) the events in ``[c, c + horizon)``. The data end on the *as-of date*, the
day after the last event. A label counts as available when ``c + horizon`` is on or before the last
event (``features/snapshots.py``: the last day may be partial), so the newest labelled cutoff is
``as_of - 1 day - horizon``.
"""

from __future__ import annotations

import pandas as pd


def as_of_date(timestamps) -> pd.Timestamp:
    """The day after the last timestamp (midnight): "now" for a table of events that ends with them.

    Raises ``ValueError`` when there is no timestamp at all.
    """
    ts = pd.to_datetime(pd.Series(timestamps), errors="coerce")
    last = ts.max()
    if pd.isna(last):
        raise ValueError("no events with a timestamp: the as-of date is undefined")
    return pd.Timestamp(last).normalize() + pd.Timedelta(days=1)


def workspace_as_of(ws) -> pd.Timestamp:
    """:func:`as_of_date` of a workspace's events table."""
    try:
        return as_of_date(ws.read_table("events", columns=["timestamp"])["timestamp"])
    except ValueError as exc:
        raise ValueError(f"workspace {ws.root}: {exc}") from None


def newest_labelled_cutoff(as_of, horizon_days: int) -> pd.Timestamp:
    """The newest cutoff whose label window ``[c, c + horizon)`` ends on the last day of data:
    ``as_of - 1 day - horizon``."""
    return pd.Timestamp(as_of).normalize() - pd.Timedelta(days=1 + int(horizon_days))


def training_cutoffs(first_event, evaluation_cutoff, horizon_days: int, step_days: int = 30,
                     min_history_days: int = 60, max_cutoffs: int | None = None) -> list[pd.Timestamp]:
    """Cutoffs every ``step_days`` back from ``evaluation_cutoff - horizon`` (the newest cutoff whose label
    window ends on or before the evaluation cutoff) to ``first_event + min_history_days``, oldest first."""
    last = pd.Timestamp(evaluation_cutoff).normalize() - pd.Timedelta(days=int(horizon_days))
    first = pd.Timestamp(first_event).normalize() + pd.Timedelta(days=min_history_days)
    out = []
    c = last
    while c >= first and (max_cutoffs is None or len(out) < max_cutoffs):
        out.append(c)
        c = c - pd.Timedelta(days=step_days)
    return sorted(out)


def rolling_cutoffs(newest, n: int, every_days: int) -> list[pd.Timestamp]:
    """The ``n`` cutoffs of a rolling-origin evaluation, oldest first: ``newest`` (normally
    :func:`newest_labelled_cutoff`) and every ``every_days`` back from it.

    Raises ``ValueError`` when ``n`` or ``every_days`` is below 1.
    """
    if int(n) < 1:
        raise ValueError(f"the number of cutoffs must be at least 1, not {n}")
    if int(every_days) < 1:
        raise ValueError(f"the days between cutoffs must be at least 1, not {every_days}")
    newest = pd.Timestamp(newest).normalize()
    return [newest - pd.Timedelta(days=int(every_days) * i) for i in range(int(n) - 1, -1, -1)]
