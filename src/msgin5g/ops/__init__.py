"""Operations: metrics, health checks, logs and the web console of the long-running actors (SPEC D15)."""
