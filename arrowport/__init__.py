"""Arrowport: Arrow streams in, transactional DuckDB and Delta Lake tables out."""

__version__ = "0.1.0"
