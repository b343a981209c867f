"""Load generators and helpers for the project's tests and benchmarks (not used by the actors)."""
