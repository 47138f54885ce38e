"""The GPU doctor: `python -m bench.doctor` (checks.py, each check isolated) and `--compile-only` (kernels.py)."""
