"""coaps (DTLS 1.2, PSK; TS 24.546 C.1.1; RFC 7252 §9.1.3.1; SPEC D12) against libcoap's OpenSSL
client (``coap-client-openssl -u IDENTITY -k KEY``).

A real ``msgin5g server --dtls-port`` process; PSK files written by ``msgin5g keys add --psk``. The
PSK identity is the identity, and it meets the same authorization as an OSCORE key or a client
certificate: a UE reads exactly its own configuration and gets 4.03 on an administrator's query,
an administrator lists, a wrong key fails the handshake, a revoked key is refused (4.01) at its
next request.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess

import pytest

from msgin5g.model import imei_urn
from msgin5g.security.dtls import derive_psk, load_psk_file
from msgin5g.store import open_store

from .conftest import make_doc
from .procs import MSGIN5G, ServerProcess

TAC = "35209900"
ME, OTHER = imei_urn(TAC, 21), imei_urn(TAC, 22)
MARK, OTHER_MARK = "svc-dtls-me-7c2a", "svc-dtls-other-3b9e"
CLIENT = shutil.which("coap-client-openssl")
needs_client = pytest.mark.skipif(CLIENT is None, reason="coap-client-openssl (libcoap3-bin) is missing")


def msgin5g(*args) -> subprocess.CompletedProcess:
    return subprocess.run([MSGIN5G, *args], capture_output=True, text=True, timeout=60)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def coap_client(uri: str, identity: str, key: str) -> str:
    """What libcoap's client prints (payload on stdout, errors on stderr), as text."""
    args = [CLIENT, "-m", "get", "-B", "10", "-u", identity, "-k", key, uri]
    p = subprocess.run(args, capture_output=True, timeout=30)
    return (p.stdout + p.stderr).decode("utf-8", "replace")


def test_psk_is_hkdf_of_the_oscore_key_as_16_base64url_characters():
    # RFC 5869 HKDF-SHA-256, computed here with the standard library's HMAC (not the code under test)
    import base64
    import hashlib
    import hmac

    secret, salt = bytes(range(32)), bytes(range(100, 108))
    prk = hmac.new(salt, secret, hashlib.sha256).digest()
    okm = hmac.new(prk, b"msgin5g coaps PSK v1" + b"\x01", hashlib.sha256).digest()[:12]
    assert derive_psk(secret, salt) == base64.urlsafe_b64encode(okm).decode()
    assert len(derive_psk(secret, salt)) == 16  # tinydtls takes at most 16-byte PSKs
    assert derive_psk(secret, salt) != derive_psk(secret, bytes(8))


@needs_client
def test_coaps_psk_with_libcoap_client(tmp_path):
    db = f"sqlite:///{tmp_path}/scm.db"
    store = open_store(db)
    store.import_docs(
        "msgin5g", [make_doc(uris=[ME], service_id=MARK), make_doc(uris=[OTHER], service_id=OTHER_MARK)]
    )
    store.close()
    ue_file, admin_file = tmp_path / "ue.psk", tmp_path / "admin.psk"
    p = msgin5g("keys", "add", f"ue:{ME}", "--db", db, "--out", str(ue_file), "--psk")
    assert p.returncode == 0, p.stderr
    assert msgin5g("keys", "add", "admin:ops", "--db", db, "--out", str(admin_file), "--psk").returncode == 0
    doc = json.loads(ue_file.read_text())
    assert doc["psk_identity"] == f"ue:{ME}" and len(doc["psk"]) == 16
    assert ue_file.stat().st_mode & 0o077 == 0
    ue_id, ue_key = load_psk_file(ue_file)
    admin_id, admin_key = load_psk_file(admin_file)
    assert admin_id == "admin:ops"
    port = free_udp_port()
    proc = ServerProcess(db, "--dtls-port", str(port), insecure=False)
    try:
        base = f"coaps://127.0.0.1:{port}/su-uc/v1/val-services/msgin5g/ue-configurations"
        out = coap_client(f"{base}?ue-uri={ME}", ue_id, ue_key)
        assert MARK in out and OTHER_MARK not in out, out  # exactly its own configuration
        out = coap_client(f"{base}?ue-uri={OTHER}", ue_id, ue_key)
        assert "4.03" in out and OTHER_MARK not in out, out
        out = coap_client(base, ue_id, ue_key)  # an administrator's (unscoped) query
        assert "4.03" in out and MARK not in out, out
        out = coap_client(base, admin_id, admin_key)  # the administrator lists every configuration
        assert MARK in out and OTHER_MARK in out, out
        wrong = ("x" if ue_key[0] != "x" else "y") + ue_key[1:]
        out = coap_client(f"{base}?ue-uri={ME}", ue_id, wrong)  # wrong key: no DTLS session
        assert MARK not in out and "2.05" not in out and "cannot send CoAP pdu" in out, out
        out = coap_client(f"{base}?ue-uri={ME}", f"ue:{OTHER}", ue_key)  # an identity without a key
        assert MARK not in out, out
        # msgin5g's own client (aiocoap's DTLS client) with the PSK file
        root = f"coaps://127.0.0.1:{port}"
        p = msgin5g(
            "ue", "get-config", "--server", root, "--ue-uri", ME, "--credentials", str(ue_file), "--json"
        )
        assert p.returncode == 0 and MARK in p.stdout and OTHER_MARK not in p.stdout, (p.stdout, p.stderr)
        p = msgin5g("ue", "get-config", "--server", root, "--ue-uri", OTHER, "--credentials", str(ue_file))
        assert p.returncode == 3 and "4.03" in p.stdout and OTHER_MARK not in p.stdout, (p.stdout, p.stderr)
        p = msgin5g("ue", "get-config", "--server", f"coap://127.0.0.1:{port}", "--ue-uri", ME,
                    "--credentials", str(ue_file))  # fmt: skip
        assert p.returncode != 0 and "is a coaps PSK file: give a coaps:// --server" in p.stderr, p.stderr
        p = msgin5g("ue", "get-config", "--server", f"coaps+ws://127.0.0.1:{port}", "--ue-uri", ME)
        assert p.returncode == 2 and "does not present TLS client certificates" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
        p = msgin5g("keys", "revoke", f"ue:{ME}", "--db", db)
        assert p.returncode == 0, p.stderr
        out = coap_client(f"{base}?ue-uri={ME}", ue_id, ue_key)  # revoked: no new session
        assert MARK not in out, out
    finally:
        err = proc.stop()
    assert "Traceback" not in err
