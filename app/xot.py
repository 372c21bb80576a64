"""Zone transfers over TLS (RFC 9103, XoT): the certificate, its pin, the TLS context.

What must stay true:

* TLS 1.3 only, ALPN ``dot`` (RFC 9103 7.1); TLS hides the list on the
  wire, it does not replace TSIG, which the dispatcher still requires.
* The certificate and key come from ``BLOCKLIST_XOT_CERT_FILE`` and
  ``BLOCKLIST_XOT_KEY_FILE``, or from a self-signed pair made once in
  ``<data dir>/xot/`` (key readable by its owner only) and reused after.
* ISPs check the server by name (``remote-hostname``) against the
  certificate, or by its SPKI pin: base64 of the SHA-256 of the
  certificate's SubjectPublicKeyInfo, as RFC 7858 section 4.2 pins. The pin
  and the certificate are the ones the transfer server serves: it stores
  its certificate in Redis when it starts, and the web and the CLI read it
  from there.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.config import Settings
from app.errors import ConfigError

ALPN = "dot"
#: Validity of a self-signed certificate made on first start.
SELF_SIGNED_DAYS = 825


@dataclass(frozen=True)
class XotCertificate:
    cert_file: Path
    key_file: Path
    pem: str

    @property
    def pin(self) -> str:
        return spki_pin(self.pem)


def spki_pin(pem: str) -> str:
    """base64(sha256(SubjectPublicKeyInfo)) of the first certificate in ``pem``."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
    except ValueError as e:
        raise ConfigError(f"not a PEM certificate: {e}") from e
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def self_signed(name: str) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for ``name`` (a host name or an IP address)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    try:
        alt: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(name))]
    except ValueError:
        alt = [x509.DNSName(name)]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_certificate(settings: Settings) -> XotCertificate:
    """The configured pair, or the self-signed one in the data directory (made now if missing)."""
    if settings.xot_cert_file is not None and settings.xot_key_file is not None:
        cert_file, key_file = settings.xot_cert_file, settings.xot_key_file
        for f, var in ((cert_file, "BLOCKLIST_XOT_CERT_FILE"), (key_file, "BLOCKLIST_XOT_KEY_FILE")):
            if not f.is_file():
                raise ConfigError(f"{var}: {f} does not exist")
    else:
        folder = settings.data_dir / "xot"
        cert_file, key_file = folder / "cert.pem", folder / "key.pem"
        if not (cert_file.is_file() and key_file.is_file()):
            cert_pem, key_pem = self_signed(settings.xot_name)
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(key_pem)
                cert_file.write_bytes(cert_pem)
            except OSError as e:
                raise ConfigError(f"cannot make the self-signed XoT certificate in {folder}: {e.strerror}; "
                                  "make that folder writable once, or set BLOCKLIST_XOT_CERT_FILE and "
                                  "BLOCKLIST_XOT_KEY_FILE") from e
    try:
        pem = cert_file.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the XoT certificate {cert_file}: {e}") from e
    spki_pin(pem)  # fails loudly on a file that is not a certificate
    return XotCertificate(cert_file, key_file, pem)


def server_context(cert: XotCertificate) -> ssl.SSLContext:
    """TLS 1.3 only, ALPN ``dot``, the certificate chain and key of ``cert``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_alpn_protocols([ALPN])
    try:
        ctx.load_cert_chain(str(cert.cert_file), str(cert.key_file))
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the XoT certificate {cert.cert_file} and key {cert.key_file}: {e}") from e
    return ctx


def certificate_name(pem: str) -> str | None:
    """The first name the certificate is for (subjectAltName, else its common name): the one ISPs check."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in alt if isinstance(n, (x509.DNSName, x509.IPAddress))]
        if names:
            return names[0]
    except x509.ExtensionNotFound:
        pass
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else None


def details(pem: str | None, settings: Settings) -> dict[str, str | None] | None:
    """What an ISP needs to check our XoT server (None until a transfer server has served XoT):
    the SPKI pin and name of the certificate served (read from it, so any host shows the same),
    and where this host's settings say it listens."""
    if pem is None:
        return None
    listen = settings.xot_listen
    return {"spki_pin_sha256": spki_pin(pem), "name": certificate_name(pem),
            "listen": (f"[{listen[0]}]:{listen[1]}" if ":" in listen[0] else f"{listen[0]}:{listen[1]}")
            if listen else None}
