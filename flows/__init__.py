"""The Prefect flows (each reads as the pipeline diagram) and the anomaflow command line."""
