"""Numbers and decisions without test labels: metrics, threshold calibration, the accept/reject
rule, label-free model selection, the promotion gate, reviewer feedback, report figures."""
