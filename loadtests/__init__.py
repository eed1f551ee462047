"""Load tests: `python -m loadtests.bench` measures the Points service against a naive app."""
