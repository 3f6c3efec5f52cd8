"""anomaflow: train on good parts only, find defective ones and show where the defect is.

The namespace maps the repository's folders (pyproject.toml `package-dir`):
`anomaflow.model` (model/, pure PyTorch and numpy), `anomaflow.tasks` (tasks/, thin Prefect tasks
and the one MLflow adapter), `anomaflow.flows` (flows/, the flows and the CLI) and
`anomaflow.review` (review/, the review web app). Importing this package imports nothing else.
"""
