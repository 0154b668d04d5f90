"""Benchmarks (run as scripts); a package so that bench.zoo can be imported from the repository root."""
