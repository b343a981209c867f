"""MSGin5G Gateway UE: bulk configuration of constrained UEs (TS 24.538 6.2.2.x; SPEC D9, D10)."""
