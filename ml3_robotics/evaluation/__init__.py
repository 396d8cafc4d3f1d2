"""Meta-test and baselines on held-out goals, starts and robots; returns data and writes nothing."""
