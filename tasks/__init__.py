"""Thin Prefect tasks over anomaflow.model, and the one MLflow adapter (tracking)."""
