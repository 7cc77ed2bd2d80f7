"""Registered model names, aliases and the MLflow experiment: the one place they are spelled."""

CHURN = "crmml-churn"
RECOMMENDER = "crmml-recommender"
MODEL_NAMES = (CHURN, RECOMMENDER)
CHAMPION = "champion"
CHALLENGER = "challenger"
EXPERIMENT = "crmml"
