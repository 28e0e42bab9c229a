"""Benchmark: the service against the in-process ceiling and the baselines a user would write by hand.

`python -m bench` measures every scenario in one run on the same photos and model and writes
bench/results/{results.json, results.md, chart.png}. See bench/__main__.py for the scenarios.
"""
