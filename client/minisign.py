"""The minisign formats: keys, signing and verification. No I/O.

Compatible with the stock ``minisign`` tool (https://jedisct1.github.io/minisign/):

* public key: ``untrusted comment: ...`` then base64(``"Ed"`` + key id (8) + Ed25519 key (32));
* secret key, unencrypted (``minisign -G -W``): base64(``"Ed"`` + kdf ``"\\0\\0"`` + ``"B2"``
  + salt (32) + opslimit (8) + memlimit (8) + key id (8) + secret key (64) + checksum (32)),
  where the checksum is BLAKE2b-256 of ``"Ed"`` + key id + secret key;
* signature: ``untrusted comment: ...``, base64(``"ED"`` + key id + Ed25519 signature of
  BLAKE2b-512(file)), ``trusted comment: <text>``, base64(Ed25519 signature of the first
  signature followed by the trusted comment text).

This module is shared by the service and the ISP pull tool, which depend on
nothing but ``cryptography``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIG_ALG_PREHASHED = b"ED"
KEY_ALG = b"Ed"
CHECKSUM_ALG = b"B2"
KDF_NONE = b"\x00\x00"
KDF_SCRYPT = b"Sc"


class MinisignError(Exception):
    """A key or signature is malformed, or a signature does not verify."""


def prehash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=64).digest()


class Prehasher:
    """BLAKE2b-512 over data given in pieces (for large files)."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=64)

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def digest(self) -> bytes:
        return self._h.digest()


def key_id_hex(key_id: bytes) -> str:
    """How minisign shows a key id: the 8 bytes as a little-endian number, in hex."""
    return f"{int.from_bytes(key_id, 'little'):016X}"


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise MinisignError(f"the {what} is not valid base64") from None


@dataclass(frozen=True)
class PublicKey:
    key_id: bytes
    key: bytes

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        """A public key file, or just its base64 line (as ``minisign -P`` takes)."""
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("untrusted comment:")]
        if len(lines) != 1:
            raise MinisignError("a minisign public key is one base64 line (after an optional comment)")
        raw = _b64decode(lines[0], "public key")
        if len(raw) != 42 or raw[:2] != KEY_ALG:
            raise MinisignError("not an Ed25519 minisign public key")
        return cls(key_id=raw[2:10], key=raw[10:42])

    @property
    def id_hex(self) -> str:
        return key_id_hex(self.key_id)

    def base64(self) -> str:
        return base64.b64encode(KEY_ALG + self.key_id + self.key).decode()

    def text(self) -> str:
        return f"untrusted comment: minisign public key {self.id_hex}\n{self.base64()}\n"

    def verify(self, sig: Signature, file_prehash: bytes) -> str:
        """Check both signatures; return the trusted comment."""
        if sig.key_id != self.key_id:
            raise MinisignError(
                f"signed with key {key_id_hex(sig.key_id)}, not with the trusted key {self.id_hex}"
            )
        pk = Ed25519PublicKey.from_public_bytes(self.key)
        try:
            pk.verify(sig.signature, file_prehash)
        except InvalidSignature:
            raise MinisignError("the signature does not match the file") from None
        try:
            pk.verify(sig.global_signature, sig.signature + sig.trusted_comment.encode())
        except InvalidSignature:
            raise MinisignError("the trusted comment has been altered") from None
        return sig.trusted_comment

    def verify_bytes(self, sig: Signature, data: bytes) -> str:
        return self.verify(sig, prehash(data))


@dataclass(frozen=True)
class Signature:
    key_id: bytes
    signature: bytes
    trusted_comment: str
    global_signature: bytes
    untrusted_comment: str = "signature from minisign secret key"

    @classmethod
    def parse(cls, text: str) -> Signature:
        lines = text.splitlines()
        if len(lines) < 4:
            raise MinisignError("a minisign signature has four lines")
        if not lines[0].startswith("untrusted comment:"):
            raise MinisignError("a minisign signature starts with 'untrusted comment:'")
        raw = _b64decode(lines[1], "signature")
        if len(raw) != 74:
            raise MinisignError("the signature line has the wrong length")
        if raw[:2] != SIG_ALG_PREHASHED:
            raise MinisignError("only prehashed (ED) minisign signatures are accepted")
        prefix = "trusted comment: "
        if not lines[2].startswith(prefix):
            raise MinisignError("the third line of a minisign signature is the trusted comment")
        global_sig = _b64decode(lines[3], "global signature")
        if len(global_sig) != 64:
            raise MinisignError("the global signature has the wrong length")
        return cls(
            key_id=raw[2:10], signature=raw[10:74], trusted_comment=lines[2][len(prefix):],
            global_signature=global_sig, untrusted_comment=lines[0][len("untrusted comment:"):].strip(),
        )

    def text(self) -> str:
        return (
            f"untrusted comment: {self.untrusted_comment}\n"
            f"{base64.b64encode(SIG_ALG_PREHASHED + self.key_id + self.signature).decode()}\n"
            f"trusted comment: {self.trusted_comment}\n"
            f"{base64.b64encode(self.global_signature).decode()}\n"
        )


@dataclass(frozen=True)
class SecretKey:
    key_id: bytes
    seed: bytes

    @classmethod
    def generate(cls) -> SecretKey:
        return cls(key_id=os.urandom(8), seed=os.urandom(32))

    @property
    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public(self) -> PublicKey:
        # Only the signing side needs this (its import costs the pull tool's start 10 ms or so).
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        pk = self._private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return PublicKey(key_id=self.key_id, key=pk)

    def sign(self, file_prehash: bytes, trusted_comment: str,
             untrusted_comment: str = "signature from minisign secret key") -> Signature:
        if "\n" in trusted_comment or "\r" in trusted_comment:
            raise MinisignError("a trusted comment is one line")
        sk = self._private
        sig = sk.sign(file_prehash)
        global_sig = sk.sign(sig + trusted_comment.encode())
        return Signature(key_id=self.key_id, signature=sig, trusted_comment=trusted_comment,
                         global_signature=global_sig, untrusted_comment=untrusted_comment)

    def sign_bytes(self, data: bytes, trusted_comment: str) -> Signature:
        return self.sign(prehash(data), trusted_comment)

    # -- minisign's unencrypted secret key file

    def text(self) -> str:
        sk64 = self.seed + self.public.key
        checksum = hashlib.blake2b(KEY_ALG + self.key_id + sk64, digest_size=32).digest()
        raw = (KEY_ALG + KDF_NONE + CHECKSUM_ALG + bytes(32) + bytes(8) + bytes(8)
               + self.key_id + sk64 + checksum)
        return ("untrusted comment: minisign secret key (unencrypted; keep this file private)\n"
                + base64.b64encode(raw).decode() + "\n")

    @classmethod
    def parse(cls, text: str) -> SecretKey:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("untrusted comment:")]
        if len(lines) != 1:
            raise MinisignError("a minisign secret key is one base64 line after its comment")
        raw = _b64decode(lines[0], "secret key")
        if len(raw) != 158 or raw[:2] != KEY_ALG or raw[4:6] != CHECKSUM_ALG:
            raise MinisignError("not an Ed25519 minisign secret key")
        if raw[2:4] == KDF_SCRYPT:
            raise MinisignError(
                "the secret key is password-protected; the service needs an unencrypted key "
                "(minisign -G -W), protected by file permissions"
            )
        if raw[2:4] != KDF_NONE:
            raise MinisignError("unknown key derivation in the secret key")
        key_id = raw[54:62]
        sk64 = raw[62:126]
        checksum = raw[126:158]
        # minisign 0.11 leaves the checksum zero in unencrypted (-W) keys.
        if checksum != bytes(32) and hashlib.blake2b(KEY_ALG + key_id + sk64, digest_size=32).digest() != checksum:
            raise MinisignError("the secret key's checksum does not match (damaged file?)")
        key = cls(key_id=key_id, seed=sk64[:32])
        if key.public.key != sk64[32:]:
            raise MinisignError("the secret key's public half does not match")
        return key


def parse_trusted_comment(comment: str) -> dict[str, str]:
    """``key:value`` pairs separated by tabs, as this service writes them."""
    out: dict[str, str] = {}
    for part in comment.split("\t"):
        k, sep, v = part.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out


def format_trusted_comment(fields: dict[str, str]) -> str:
    for k, v in fields.items():
        if "\t" in k or "\t" in v or ":" in k or "\n" in v:
            raise MinisignError("trusted comment fields may not contain tabs, newlines or ':' in names")
    return "\t".join(f"{k}:{v}" for k, v in fields.items())
