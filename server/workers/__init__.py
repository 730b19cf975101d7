"""``sluice serve --workers N``: the supervisor that runs and restarts worker processes, and the
/metrics it serves by merging theirs."""
