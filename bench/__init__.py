"""Benchmarks (not tests): `make bench` runs them and writes JSON results to bench/results/."""
