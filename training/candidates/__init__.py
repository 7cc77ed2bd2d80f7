"""Candidate generators for the recommender, one readable module per generator (implicit-style).

=================  ==================================================  ==========================
name               what it proposes                                    module
=================  ==================================================  ==========================
buy_again          the user's own items, recency-decayed               ``buy_again.py``
frequency          the user's own items by purchase count              ``frequency.py``
als / bpr          implicit matrix factorisation                       ``als.py``
bm25 / cosine      implicit item-item neighbours                       ``item_knn.py``
ease               closed-form item-item linear model                  ``ease.py``
cooc               frequently bought together (basket rules)           ``cooccurrence.py``
popular            most users overall                                  ``popularity.py``
trending           fastest-growing items                               ``popularity.py``
popular_segment    most users in the user's segment / country          ``popularity.py``
seasonal           most users in the same weeks a year earlier         ``popularity.py``
=================  ==================================================  ==========================

``union.py`` merges their top lists for one user and builds the re-ranker's features.
"""

from training.candidates.als import ALSGenerator
from training.candidates.base import CandidateGenerator, FitData, Query
from training.candidates.buy_again import BuyAgainGenerator
from training.candidates.cooccurrence import CooccurrenceGenerator
from training.candidates.ease import EASEGenerator
from training.candidates.frequency import FrequencyGenerator
from training.candidates.item_knn import ItemKNNGenerator
from training.candidates.popularity import (
    PopularityGenerator,
    SeasonalGenerator,
    SegmentPopularityGenerator,
    TrendingGenerator,
)

__all__ = [
    "ALSGenerator",
    "BuyAgainGenerator",
    "CandidateGenerator",
    "CooccurrenceGenerator",
    "EASEGenerator",
    "FitData",
    "FrequencyGenerator",
    "ItemKNNGenerator",
    "PopularityGenerator",
    "Query",
    "SeasonalGenerator",
    "SegmentPopularityGenerator",
    "TrendingGenerator",
    "GENERATOR_NAMES",
    "OWN_ITEM_GENERATORS",
]

GENERATOR_NAMES = ("buy_again", "frequency", "als", "bpr", "bm25", "cosine", "ease", "cooc", "popular", "trending", "popular_segment", "seasonal")
#: generators that only score the user's own items: nothing to say about items new to the user
OWN_ITEM_GENERATORS = ("buy_again", "frequency")
