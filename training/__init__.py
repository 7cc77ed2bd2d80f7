"""Models, their evaluation, the registry and the use cases that train and promote them.

``ChurnModel`` and ``Recommender`` are re-exported on first use, so that importing a light module of
this package (``training.names``, ``training.registry``) does not load the estimators' libraries.
"""

import os

# LightGBM's OpenMP threads (churn model, recommender re-ranker, uplift learners) spin while they wait for
# each other; on a machine whose cores are busy with other work a spinning thread holds a core its partner
# needs, and a 2-thread fit measured 9x slower in wall time and 11x in CPU than with sleeping waits
# (BENCHMARKS.md, churn training time). Set here, before any LightGBM fit starts the OpenMP runtime, for
# every model of the package; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def __getattr__(name: str):
    if name == "ChurnModel":
        from training.churn import ChurnModel

        return ChurnModel
    if name == "Recommender":
        from training.recommender import Recommender

        return Recommender
    raise AttributeError(f"module 'training' has no attribute {name!r}")


__all__ = ["ChurnModel", "Recommender"]
