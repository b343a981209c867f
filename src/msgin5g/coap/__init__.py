"""CoAP layer shared by every actor (RFC 7252, 7959, 9177): codec, message layer, aiocoap adjustments."""
