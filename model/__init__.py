"""Pure PyTorch and numpy: no Prefect, no MLflow. The typed run config, the core run as steps
(pipeline), and the four groups: detectors, data, evaluation, operations."""
