"""msgin5g — MSGin5G UE configuration over CoAP (TS 24.538 Rel-18 over TS 24.546 Annex C)."""

__version__ = "0.1.0"
