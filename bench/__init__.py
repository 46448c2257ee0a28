"""celeray's benchmark suite: the same jobs through celeray and its peers, in one run.

Run it with ``python -m bench`` (see ``bench/README.md``). Benchmarks are not tests: they
assert nothing about timings, they print each engine's numbers and celeray's ratio to each
peer measured in the same run, and write them as JSON under ``bench/results/``.
"""
