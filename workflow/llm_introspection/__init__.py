"""Introspection experiments on open language models: the library behind the Snakemake workflow."""

__version__ = "0.1.0"
