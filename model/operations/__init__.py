"""Running a fitted model on a line: batch inspection bookkeeping, heat maps, drift, export and
the torch-free runtime of an exported graph."""
