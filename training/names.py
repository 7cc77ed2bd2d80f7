"""Registered model names, aliases and the MLflow experiment: the one place they are spelled."""

CHURN = "crmml-churn"
RECOMMENDER = "crmml-recommender"
UPLIFT = "crmml-uplift"  # optional: registered by `crmml train uplift`, not part of MODEL_NAMES
MODEL_NAMES = (CHURN, RECOMMENDER)
CHAMPION = "champion"
CHALLENGER = "challenger"
EXPERIMENT = "crmml"
