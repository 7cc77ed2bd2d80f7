from training.churn import ChurnModel
from training.recommender import Recommender
