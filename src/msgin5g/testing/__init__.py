"""Helpers for testing the actors over real sockets: the load generator (swarm) and the fuzzer. Not used by
the actors."""
