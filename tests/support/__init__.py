"""The shared test harness: processes (procs.py), synthetic data (data.py), the tiny text encoder (bert.py)."""
