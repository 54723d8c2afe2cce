"""The benchmark suite: scripts, never timed tests. See ``python -m benchmarks --help``."""
