"""Incremental HATS light-curve collection from the Rubin PPDB parquet export."""

__version__ = "0.1.0"
