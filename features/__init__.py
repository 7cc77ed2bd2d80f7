"""Feature pipelines: from raw histories to canonical tables and point-in-time training data."""

import warnings

# pandera imports pyspark when it is installed; pyspark warns about pandas 3 on import.
warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
