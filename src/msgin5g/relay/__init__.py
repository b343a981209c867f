"""MSGin5G Relay UE (TS 24.538 6.2.2.1; SPEC §3.2, D8): pure core, PC5 signalling codec, UDP shell."""
