"""This device's LAN identity (a TLS key and self-signed certificate kept in
the client home) and the checks peers make of each other's tickets."""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from protocol import lan

KEY_FILE, CERT_FILE = "lan-key.pem", "lan-cert.pem"


@dataclass
class Identity:
    key_path: Path
    cert_path: Path
    key: ec.EllipticCurvePrivateKey
    cert_der: bytes

    @property
    def fingerprint(self) -> bytes:
        return hashlib.sha256(self.cert_der).digest()

    @property
    def cert_b64(self) -> str:
        return base64.b64encode(self.cert_der).decode()

    def prove(self, serving_fingerprint: bytes) -> str:
        sig = self.key.sign(lan.proof_message(serving_fingerprint), ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(sig).decode()

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx


def client_context() -> ssl.SSLContext:
    """TLS without a CA: the peer's certificate is checked against the
    fingerprint its server-signed ticket names (:func:`check_ticket`)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def load_identity(home: Path) -> Identity:
    """The device's TLS key and certificate, made on first use (mode 0600)."""
    folder = home / "lan"
    key_path, cert_path = folder / KEY_FILE, folder / CERT_FILE
    if not (key_path.exists() and cert_path.exists()):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ferry-device")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650)).sign(key, hashes.SHA256())
        )  # fmt: skip
        _write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if not isinstance(loaded, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC key; delete {folder} to make a new LAN identity")
    return Identity(key_path, cert_path, loaded, cert.public_bytes(serialization.Encoding.DER))


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def check_ticket(ticket: str, server_key: str, fingerprint: bytes, now_s: float) -> lan.Claims:
    """The claims of ``ticket`` if the server signed it, it has not expired and
    it names ``fingerprint``; else :class:`protocol.lan.BadTicket`."""
    if not ticket:
        raise lan.BadTicket("no ticket")
    signed, signature = lan.split_ticket(ticket)
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(server_key)).verify(signature, signed)
    except (InvalidSignature, ValueError):
        raise lan.BadTicket("ticket not signed by this server") from None
    claims = lan.parse_claims(signed, now_s)
    if claims.fingerprint != fingerprint:
        raise lan.BadTicket("ticket names another TLS key")
    return claims


def check_requester(hello_ticket: str, cert_b64: str, proof_b64: str, server_key: str,
                    my_fingerprint: bytes, now_s: float) -> lan.Claims:  # fmt: skip
    """A requester's claims: its ticket names the certificate it sent, and it
    proved it holds that certificate's key for a link to this very peer."""
    try:
        der, proof = base64.b64decode(cert_b64, validate=True), base64.b64decode(proof_b64, validate=True)
        public = x509.load_der_x509_certificate(der).public_key()
    except (binascii.Error, ValueError):
        raise lan.BadTicket("malformed certificate or proof") from None
    claims = check_ticket(hello_ticket, server_key, hashlib.sha256(der).digest(), now_s)
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise lan.BadTicket("certificate key is not an EC key")
    try:
        public.verify(proof, lan.proof_message(my_fingerprint), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise lan.BadTicket("proof does not match the certificate") from None
    return claims
