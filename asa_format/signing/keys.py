"""Signing and verification keys: ECDSA on P-256, P-384 or P-521."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Union

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from asa_format.errors import AsaError, SignatureError
from asa_format.storage.inputs import MAX_KEY_BYTES, read_input

__all__ = [
    "KeySource",
    "PrivateKeySource",
    "ecdsa_algorithm",
    "load_private_key",
    "load_public_key",
    "public_key_hint",
]

_SUPPORTED_CURVES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}

KeySource = Union[bytes, str, "os.PathLike[str]", ec.EllipticCurvePublicKey]
PrivateKeySource = Union[bytes, str, "os.PathLike[str]", ec.EllipticCurvePrivateKey]


def _read_key_bytes(source: bytes | str | os.PathLike[str], what: str) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, f"<{what} bytes>"
    if not isinstance(source, (str, os.PathLike)):
        raise SignatureError(
            f"a {what} must be a key object, PEM bytes or a file path, "
            f"not a {type(source).__name__}",
            code="SIGNATURE_KEY_INVALID",
            hint=f"pass the path of a PEM-encoded {what}",
        )
    path = Path(source)
    try:  # a regular file under the cap: never a FIFO or a device
        return read_input(path, what=f"the {what} file", cap=MAX_KEY_BYTES), str(path)
    except AsaError as exc:
        raise SignatureError(
            f"cannot read the {what} file: {exc.message}",
            code="SIGNATURE_KEY_INVALID",
            file=str(path),
            hint=f"pass the path of a PEM-encoded {what}",
        ) from None


def _check_curve(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey, where: str) -> None:
    if key.curve.name not in _SUPPORTED_CURVES:
        raise SignatureError(
            f"unsupported elliptic curve {key.curve.name!r}",
            code="SIGNATURE_KEY_INVALID",
            file=where,
            hint="use an ECDSA key on P-256, P-384 or P-521",
        )


def load_private_key(
    source: PrivateKeySource, *, password: bytes | None = None
) -> ec.EllipticCurvePrivateKey:
    """Load an ECDSA private key (PEM bytes, a PEM file path or a key object)."""
    if isinstance(source, ec.EllipticCurvePrivateKey):
        _check_curve(source, "<private key object>")
        return source
    data, where = _read_key_bytes(source, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError, crypto_exceptions.UnsupportedAlgorithm) as exc:
        raise SignatureError(
            f"cannot load the private key: {exc}",
            code="SIGNATURE_KEY_INVALID",
            file=where,
            hint="pass a PEM-encoded ECDSA private key (and its password if it is encrypted)",
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise _not_ec("private", key, where)
    _check_curve(key, where)
    return key


def load_public_key(source: KeySource) -> ec.EllipticCurvePublicKey:
    """Load an ECDSA public key (PEM or DER bytes, a file path or a key object)."""
    if isinstance(source, ec.EllipticCurvePublicKey):
        _check_curve(source, "<public key object>")
        return source
    data, where = _read_key_bytes(source, "public key")
    try:
        if data.lstrip().startswith(b"-----"):
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, TypeError, crypto_exceptions.UnsupportedAlgorithm) as exc:
        raise SignatureError(
            f"cannot load the public key: {exc}",
            code="SIGNATURE_KEY_INVALID",
            file=where,
            hint="pass a PEM-encoded SubjectPublicKeyInfo ECDSA public key",
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise _not_ec("public", key, where)
    _check_curve(key, where)
    return key


def _not_ec(kind: str, key: object, where: str) -> SignatureError:
    return SignatureError(
        f"the {kind} key is a {type(key).__name__}, not an elliptic-curve key",
        code="SIGNATURE_KEY_INVALID",
        file=where,
        hint="use an ECDSA key on P-256, P-384 or P-521",
    )


def public_key_hint(key: ec.EllipticCurvePublicKey) -> str:
    """sha256 (hex) of the PEM SubjectPublicKeyInfo: the ``publicKey.hint`` of model_signing."""
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(pem).hexdigest()


def ecdsa_algorithm(key: ec.EllipticCurvePublicKey, *, deterministic: bool = False) -> ec.ECDSA:
    algorithm = _SUPPORTED_CURVES[key.curve.name]()
    if deterministic:
        return ec.ECDSA(algorithm, deterministic_signing=True)
    return ec.ECDSA(algorithm)
