"""Hypothesis profiles: "ci" (the default) keeps the whole suite within a few minutes on
2 cores; "dev" explores more (HYPOTHESIS_PROFILE=dev pytest). tests/ mirrors numpygpt/'s
folders; helpers.py (shared by all) is importable from every one of them."""
import os
import sys

from hypothesis import HealthCheck, settings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
