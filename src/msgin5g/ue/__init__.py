"""MSGin5G UE side: the SCM-C of an unconstrained UE and the constrained UE's client."""
