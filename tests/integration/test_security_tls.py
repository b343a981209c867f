"""coaps+tcp with mutual TLS (TS 24.546 C.1.1; RFC 8323; SPEC D12), against libcoap's OpenSSL client.

A real ``msgin5g server --tls-port`` process; client certificates issued by ``msgin5g keys cert``
from the CA kept in the store; requests made by ``coap-client-openssl`` (``-c``/``-j``/``-C``). The
identity in the certificate's subjectAltName URI meets the same authorization as an OSCORE key.
"""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from msgin5g.authz import Identity, Role
from msgin5g.model import imei_urn
from msgin5g.security.tls import identity_from_peercert, issue, new_ca, serial_of
from msgin5g.store import open_store

from .conftest import make_doc
from .procs import MSGIN5G, ServerProcess

TAC = "35209900"
ME, OTHER = imei_urn(TAC, 11), imei_urn(TAC, 12)
MARK = "svc-tls-me-5d1e"
CLIENT = shutil.which("coap-client-openssl")


def msgin5g(*args) -> subprocess.CompletedProcess:
    return subprocess.run([MSGIN5G, *args], capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def coap_client(uri: str, certs, ca) -> str:
    """What libcoap's client prints (payload on stdout, error codes on stderr), as text; ``certs``
    is a directory written by ``keys cert`` (None: no client certificate), ``ca`` the CA file."""
    args = [CLIENT, "-m", "get", "-B", "10"]
    if certs is not None:
        args += ["-c", str(certs / "cert.pem"), "-j", str(certs / "key.pem")]
    args += ["-C", str(ca), uri]
    p = subprocess.run(args, capture_output=True, timeout=30)
    return (p.stdout + p.stderr).decode("utf-8", "replace")


def test_identity_from_a_certificate_is_its_one_subject_alt_name_uri():
    ca_cert, ca_key = new_ca()
    cert, _, serial = issue(ca_cert, ca_key, identity=Identity(Role.UE, ME))
    assert serial > 0 and "BEGIN CERTIFICATE" in cert
    # the getpeercert() form, written from the ssl module's documentation
    peer = {"subjectAltName": (("URI", f"ue:{ME}"),), "serialNumber": format(serial, "X")}
    assert identity_from_peercert(peer) == Identity(Role.UE, ME) and serial_of(peer) == serial
    assert identity_from_peercert({"subjectAltName": (("DNS", "x"),)}) is None
    assert identity_from_peercert({"subjectAltName": (("URI", "ue:a"), ("URI", "admin:b"))}) is None
    assert identity_from_peercert({"subjectAltName": (("URI", "nobody:x"),)}) is None
    assert identity_from_peercert(None) is None


@pytest.mark.skipif(CLIENT is None, reason="coap-client-openssl (libcoap3-bin) is not installed")
def test_coaps_tcp_mutual_tls_with_libcoap_client(tmp_path):
    db = f"sqlite:///{tmp_path}/scm.db"
    store = open_store(db)
    store.import_docs(
        "msgin5g", [make_doc(uris=[ME], service_id=MARK), make_doc(uris=[OTHER], service_id="o")]
    )
    store.close()
    me, stranger = tmp_path / "me", tmp_path / "stranger"
    p = msgin5g("keys", "cert", f"ue:{ME}", "--db", db, "--out", str(me))
    assert p.returncode == 0, p.stderr
    assert sorted(f.name for f in me.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert (me / "key.pem").stat().st_mode & 0o077 == 0
    p = msgin5g("keys", "cert", f"ue:{ME}", "--db", db, "--out", str(me))
    assert p.returncode != 0 and "never overwritten" in p.stderr
    # a certificate of another store's CA: not trusted here
    p = msgin5g("keys", "cert", f"ue:{ME}", "--db", f"sqlite:///{tmp_path}/other.db", "--out", str(stranger))
    assert p.returncode == 0, p.stderr
    ca = me / "ca.pem"
    port = free_port()
    proc = ServerProcess(db, "--tls-port", str(port), insecure=False)
    try:
        base = f"coaps+tcp://127.0.0.1:{port}/su-uc/v1/val-services/msgin5g/ue-configurations"
        out = coap_client(f"{base}?ue-uri={ME}", me, ca)
        assert MARK in out, out  # its own configuration
        out = coap_client(f"{base}?ue-uri={OTHER}", me, ca)
        assert "4.03" in out and '"o"' not in out, out  # another UE's: refused, nothing of it shown
        out = coap_client(f"{base}?ue-uri={ME}", None, ca)  # no client certificate: no TLS session
        assert MARK not in out and "2.05" not in out, out
        out = coap_client(f"{base}?ue-uri={ME}", stranger, ca)  # a certificate of another CA
        assert MARK not in out, out
        p = msgin5g("keys", "revoke", f"ue:{ME}", "--db", db)
        assert p.returncode == 0 and "TLS client certificates revoked" in p.stdout, p.stderr
        out = coap_client(f"{base}?ue-uri={ME}", me, ca)  # revoked: refused at its next request
        assert "4.01" in out and MARK not in out, out
    finally:
        err = proc.stop()
    assert "Traceback" not in err
