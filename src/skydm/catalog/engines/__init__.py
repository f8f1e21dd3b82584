"""Catalog engines: DuckDB over Parquet (default) and PostgreSQL with q3c."""
