"""Models, their evaluation, the registry and the use cases that train and promote them.

``ChurnModel`` and ``Recommender`` are re-exported on first use, so that importing a light module of
this package (``training.names``, ``training.registry``) does not load the estimators' libraries.
"""


def __getattr__(name: str):
    if name == "ChurnModel":
        from training.churn import ChurnModel

        return ChurnModel
    if name == "Recommender":
        from training.recommender import Recommender

        return Recommender
    raise AttributeError(f"module 'training' has no attribute {name!r}")


__all__ = ["ChurnModel", "Recommender"]
