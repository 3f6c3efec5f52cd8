"""MLflow models-from-code entry point: the pyfunc is rebuilt from the installed package,
not unpickled, when a registered model is loaded."""

from mlflow.models import set_model

from anomaflow.tasks.serving import AnomaflowModel

set_model(AnomaflowModel())
