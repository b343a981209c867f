"""Helpers for testing the actors over real sockets (fuzzing, swarms)."""
