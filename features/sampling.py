"""Deterministic samples of customers by id hash: the same customers in every cutoff, run and machine.

Large shops (issue #17: 1,000,000 customers) fit some shop-wide statistics and models on a sample of
customers instead of all of them: the BG/NBD population parameters (``features.churn_features``,
``BGNBD_SAMPLE``) and the churn model's training rows (``crmml train churn --sample-customers``).
A customer is in a sample of ``size`` out of ``n`` customers when ``hash_unit(id) < size / n``: about
``size`` customers, the same ones whatever else is in the data, and a larger sample holds a smaller
one. A shop with at most ``size`` customers is not sampled at all (its results are unchanged).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

TRAIN_CUSTOMERS = 200_000
"""Default of ``crmml train churn`` / ``crmml evaluate churn --sample-customers`` (``training.churn``,
``sample_customers``): the backtest and the final churn model learn from the rows of a hash sample of
about this many customers, read cutoff by cutoff from the stored matrix. 1,000,000 customers x ~20
cutoffs of snapshots do not fit in memory at once, and 200,000 customers' few million labelled rows
already pin down a LightGBM of 15 leaves; shops up to this size train on everyone."""


def hash_unit(ids) -> np.ndarray:
    """A number in [0, 1) per id from the MD5 of its text (each distinct id hashed once)."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(ids)))
    unit = np.fromiter((int(hashlib.md5(str(i).encode(), usedforsecurity=False).hexdigest()[:8], 16) / 2**32
                        for i in uniques), dtype="float64", count=len(uniques))
    return unit[codes]


def in_sample(ids, size: int | None, n_customers: int | None = None) -> np.ndarray:
    """Which of ``ids`` are in the hash sample of about ``size`` of ``n_customers`` customers
    (default: the distinct ``ids``). Everyone when ``size`` is None/0 or not below ``n_customers``."""
    ids = np.asarray(ids)
    n = int(n_customers) if n_customers is not None else int(pd.Series(ids).nunique())
    if not size or n <= int(size):
        return np.ones(len(ids), dtype=bool)
    return hash_unit(ids) < int(size) / n
