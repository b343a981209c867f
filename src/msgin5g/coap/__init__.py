"""The CoAP layer shared by the actors (RFC 7252 and its extensions, over aiocoap)."""
