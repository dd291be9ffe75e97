"""Scale benchmarks: a synthetic shop log of 1M to 100M events, and each stage timed on it."""
