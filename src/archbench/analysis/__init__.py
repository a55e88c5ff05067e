"""Evidence from finished runs: final evaluations, metrics, statistics, verdicts, figures and the report."""
