"""radis-bench engine: config, models, data, generation, training, runs and reports."""

__version__ = "0.1.0"
