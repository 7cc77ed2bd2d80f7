from training.churn import ChurnModel
