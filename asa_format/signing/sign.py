"""Sign a bundle: a Sigstore bundle with a DSSE envelope over the statement."""

from __future__ import annotations

import base64
import json
import os
import warnings
from pathlib import Path

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives.asymmetric import ec

from asa_format import constants as C
from asa_format.errors import AsaError, BundleError, UsageError
from asa_format.signing.files import (
    checked_bundle_dir,
    default_signature_path,
    hash_bundle_files,
    is_inside,
)
from asa_format.signing.keys import (
    PrivateKeySource,
    ecdsa_algorithm,
    load_private_key,
    public_key_hint,
)
from asa_format.signing.statement import (
    DSSE_PAYLOAD_TYPE,
    SIGSTORE_BUNDLE_MEDIA_TYPE,
    build_statement,
    dsse_pae,
)

__all__ = ["sign_bundle"]


def _resolve_signature_path(bundle: Path, signature_path: str | os.PathLike[str] | None) -> Path:
    if signature_path is None:
        return default_signature_path(bundle)
    path = Path(signature_path)
    if is_inside(path, bundle) and path.resolve() != default_signature_path(bundle).resolve():
        raise UsageError(
            f"a signature inside the bundle must be named {C.SIGNATURE_FILE} at its root",
            file=str(path),
            hint=f"omit --signature (default {C.SIGNATURE_FILE}) or write it outside the bundle",
        )
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sign_bundle(
    bundle_dir: str | os.PathLike[str],
    private_key: ec.EllipticCurvePrivateKey,
    *,
    signature_path: str | os.PathLike[str] | None = None,
    password: bytes | None = None,
    private_key_pem: PrivateKeySource | None = None,
) -> Path:
    """Sign every file of ``bundle_dir`` with ``private_key``; write the signature, return its path.

    ``private_key`` is an ECDSA key object; read one from a PEM file or bytes
    with :func:`~asa_format.signing.keys.load_private_key` (which takes the
    password of an encrypted key). The signature goes to ``<bundle>/model.sig``
    unless ``signature_path`` names a place outside the bundle. The result is
    accepted by ``model_signing verify key``. ECDSA signing is deterministic
    (RFC 6979) where the crypto backend supports it, so the same bundle, key
    and directory name give the same bytes.

    Deprecated: a PEM path or bytes as the key (or ``private_key_pem=``, and
    ``password=``) still work and warn.
    """
    from asa_format.argcheck import optional_path_arg, path_arg

    path_arg(bundle_dir, "bundle_dir")
    target_arg = optional_path_arg(signature_path, "signature_path")
    if target_arg is not None and os.path.lexists(target_arg) and not target_arg.is_file():
        # never replace a device, a FIFO, a directory or a link's target with a signature
        raise UsageError(
            f"signature_path {str(target_arg)!r} exists and is not a regular file",
            hint="choose a new path for the signature",
        )
    if password is not None and not isinstance(password, bytes):
        raise UsageError(
            f"password must be bytes or None, not {type(password).__name__}",
            hint="pass password=b'...'",
        )
    if private_key_pem is not None:
        warnings.warn(
            "sign_bundle(private_key_pem=...) is deprecated; pass a key object "
            "(asa_format.signing.load_private_key)",
            DeprecationWarning,
            stacklevel=2,
        )
        private_key = private_key_pem  # type: ignore[assignment]
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or password is not None:
        warnings.warn(
            "sign_bundle with a PEM path or bytes (or password=) is deprecated; pass a key "
            "object from asa_format.signing.load_private_key(path, password=...)",
            DeprecationWarning,
            stacklevel=2,
        )
    bundle = checked_bundle_dir(bundle_dir)
    key = load_private_key(private_key, password=password)
    target = _resolve_signature_path(bundle, signature_path)
    if not (bundle / C.MANIFEST_FILE).is_file():
        raise BundleError(
            "the bundle has no manifest file",
            code="MANIFEST_MISSING",
            file=C.MANIFEST_FILE,
            hint="sign a complete asa-bundle directory",
        )
    files = hash_bundle_files(bundle)
    name = bundle.resolve().name
    statement = build_statement(name, files)
    payload = json.dumps(statement, indent=2, sort_keys=True, ensure_ascii=True).encode("ascii")
    pae = dsse_pae(DSSE_PAYLOAD_TYPE, payload)
    try:
        raw_sig = key.sign(pae, ecdsa_algorithm(key.public_key(), deterministic=True))
    except crypto_exceptions.UnsupportedAlgorithm:  # pragma: no cover - old OpenSSL
        raw_sig = key.sign(pae, ecdsa_algorithm(key.public_key()))
    document = {
        "mediaType": SIGSTORE_BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {
            "publicKey": {"hint": public_key_hint(key.public_key())},
            "tlogEntries": [],
        },
        "dsseEnvelope": {
            "payload": _b64(payload),
            "payloadType": DSSE_PAYLOAD_TYPE,
            "signatures": [{"sig": _b64(raw_sig), "keyid": ""}],
        },
    }
    data = (json.dumps(document, separators=(",", ":")) + "\n").encode("ascii")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise AsaError(
            f"cannot write the signature: {exc.strerror or exc}", code="IO_ERROR", file=str(target)
        ) from exc
    return target
