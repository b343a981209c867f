"""coaps+tcp and coaps+ws with mutual TLS: the certificate authority kept in the store, client
certificates naming an identity, and the server's TLS context (TS 24.546 C.1.1; RFC 8323; SPEC D12).

* The **CA** is one ECDSA P-256 key and self-signed certificate, made on first use and kept in the
  store (``tls_ca``), so every SCM-S process and node of one store trusts the same clients.
* A **client certificate** (``msgin5g keys cert IDENTITY --db URL --out DIR``) carries the identity
  as its subjectAltName URI (``ue:urn:gsma:imei:…``, ``gateway:gw1``, ``admin:ops``); its serial
  number is recorded with the identity (``tls_certs``), and ``keys revoke`` revokes it with the
  OSCORE key: a revoked certificate is refused at its next request.
* The **server certificate** is issued by the same CA at start-up for the host it serves.

The identity of a verified peer comes from its certificate (:func:`identity_from_peercert`, pure)
and then meets the same authorization as an OSCORE identity.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..authz import Identity, parse_identity
from ..model import ModelError
from .server import ChannelSecuredSite

CA_NAME = "msgin5g SCM-S clients CA"
CA_DAYS = 3650
CERT_DAYS = 825


def _pem_key(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def new_ca() -> tuple[str, str]:
    """A fresh CA: (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def issue(
    ca_cert_pem: str, ca_key_pem: str, *, identity: Identity | None = None, hosts: tuple[str, ...] = ()
) -> tuple[str, str, int]:
    """A certificate signed by the CA: for a client (``identity`` in the subjectAltName URI, EKU
    clientAuth) or for the server (``hosts`` as DNS names / IP addresses, EKU serverAuth).
    Returns (certificate PEM, private key PEM, serial number)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem.encode(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    serial = x509.random_serial_number()
    if identity is not None:
        cn, san, eku = (
            str(identity),
            [x509.UniformResourceIdentifier(str(identity))],
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
    else:
        names: list[x509.GeneralName] = []
        for h in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                names.append(x509.DNSName(h))
        cn, san, eku = hosts[0] if hosts else "scm-s", names, ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key), serial


def identity_from_peercert(peercert: dict | None) -> Identity | None:
    """The identity a verified client certificate names: its one subjectAltName URI (as
    ``ssl.SSLSocket.getpeercert()`` returns it), or None (none, several, or not an identity)."""
    if not peercert:
        return None
    uris = [v for k, v in peercert.get("subjectAltName", ()) if k == "URI"]
    if len(uris) != 1:
        return None
    try:
        return parse_identity(uris[0])
    except ModelError:
        return None


def serial_of(peercert: dict | None) -> int | None:
    if not peercert or "serialNumber" not in peercert:
        return None
    return int(peercert["serialNumber"], 16)


def server_context(ca_cert_pem: str, cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """TLS ≥ 1.2 server context that requires a client certificate from the CA (mutual TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca_cert_pem)
    with tempfile.TemporaryDirectory(prefix="msgin5g-tls-") as d:  # ssl loads keys from files only
        cert_file, key_file = Path(d) / "cert.pem", Path(d) / "key.pem"
        cert_file.write_text(cert_pem)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def client_context(ca_cert_pem: str, cert_file: str, key_file: str) -> ssl.SSLContext:
    """A client's TLS context: trusts the store's CA, presents its certificate."""
    ctx = ssl.create_default_context(cadata=ca_cert_pem)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def write_client_files(directory: Path, cert_pem: str, key_pem: str, ca_pem: str) -> None:
    """``cert.pem``, ``key.pem`` (0600) and ``ca.pem`` in ``directory`` (never overwritten)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text, mode in (
        ("cert.pem", cert_pem, 0o644),
        ("key.pem", key_pem, 0o600),
        ("ca.pem", ca_pem, 0o644),
    ):
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)


class TlsSite(ChannelSecuredSite):
    """The SCM-S site behind mutual TLS (coaps+tcp, coaps+ws): a request whose connection presented
    no certificate of this store's CA, or a revoked one, gets 4.01 problem details; otherwise the
    site serves it, the identity taken from the certificate (:func:`tls_identity`)."""

    async def authenticated(self, request) -> bool:
        from ..coap.aiocoap_tweaks import tls_peer_certificate

        peercert = tls_peer_certificate(request.remote)
        identity, serial = identity_from_peercert(peercert), serial_of(peercert)
        if identity is None or serial is None:
            return False
        return await asyncio.to_thread(self.store.cert_identity, serial) == str(identity)


def tls_identity(request) -> Identity | None:
    """The identity of a request that came over mutual TLS (None: not over TLS)."""
    from ..coap.aiocoap_tweaks import tls_peer_certificate

    return identity_from_peercert(tls_peer_certificate(request.remote))
