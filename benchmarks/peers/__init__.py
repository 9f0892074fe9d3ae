"""The peers of `python -m benchmarks.run --peers`: the catalogue (catalog.py), their apps (fastapi_*.py,
kserve_model.py, each run in the peer's own environment) and the comparison (compare.py).

Empty on purpose: the peers' apps are imported as benchmarks.peers.<app> in environments without the project's
dependencies, which run this file first.
"""
