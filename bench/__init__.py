"""Benchmarks, each a module run from the repository root as `python -m bench.NAME` (for
example `python -m bench.sample_bench --help`); what they share is in `bench.common`."""
