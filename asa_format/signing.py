"""Bundle signatures compatible with OpenSSF model signing (``model_signing``).

A signature is a Sigstore bundle (JSON, media type
``application/vnd.dev.sigstore.bundle.v0.3+json``) holding a DSSE envelope
over an in-toto v1 statement with predicate type
``https://model_signing/signature/v1.0`` and ``files`` serialization with
sha256: the same format ``model_signing sign key`` writes and
``model_signing verify key`` reads. The default location is
``<bundle>/model.sig`` (:data:`asa_format.constants.SIGNATURE_FILE`); that one
name at the bundle root is never covered by a signature and never listed in
the manifest.

Verification checks, in order: the signature file parses; the verification
material names a trusted key and the ECDSA signature over the DSSE
pre-authentication encoding verifies under it; the statement is well formed
and its subject digest agrees with its resources; every file of the bundle
directory (except the signature file) is covered with the right sha256 and
every covered file exists. Symbolic links and special files are refused.

Only key-based signatures (ECDSA P-256, P-384, P-521) are supported. The
verification material is dispatched on its kind (``publicKey`` today), so
certificate-based (keyless) material can be added without changing the
format.

This module needs only ``cryptography`` and the standard library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from asa_format import constants as C
from asa_format.digest import DIGEST_PREFIX, root_digest
from asa_format.errors import AsaError, Problem, SignatureError, UsageError
from asa_format.jsonio import DuplicateKeyError, NonFiniteError, loads_strict

__all__ = [
    "DSSE_PAYLOAD_TYPE",
    "HASH_TYPE",
    "IN_TOTO_STATEMENT_TYPE",
    "MAX_SIGNATURE_BYTES",
    "PREDICATE_TYPE",
    "SERIALIZATION_METHOD",
    "SIGSTORE_BUNDLE_MEDIA_TYPE",
    "KeySource",
    "VerifiedSignature",
    "build_statement",
    "default_signature_path",
    "dsse_pae",
    "hash_bundle_files",
    "load_private_key",
    "load_public_key",
    "public_key_hint",
    "root_digest_of_dir",
    "sign_bundle",
    "verify_bundle_signature",
]

SIGSTORE_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
SERIALIZATION_METHOD = "files"
HASH_TYPE = "sha256"
MAX_SIGNATURE_BYTES = 4 << 20  # 4 MiB: a statement over MAX_FILES files is far smaller

_SUPPORTED_CURVES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}
_HEX = frozenset("0123456789abcdef")
_CHUNK = 1 << 20

KeySource = Union[bytes, str, "os.PathLike[str]", ec.EllipticCurvePublicKey]
PrivateKeySource = Union[bytes, str, "os.PathLike[str]", ec.EllipticCurvePrivateKey]


@dataclass(frozen=True)
class VerifiedSignature:
    """What a successful verification established.

    ``root_digest`` is the root digest of the signed bundle (the statement's
    sha256 of ``manifest.json``, which equals the bundle's own root digest once
    verification has passed); ``subject_digest`` is model_signing's digest over
    all resource digests; ``key_hint`` is the sha256 (hex) of the PEM
    SubjectPublicKeyInfo of the key that verified the signature.
    """

    bundle_dir: Path
    signature_path: Path
    root_digest: str
    subject_name: str
    subject_digest: str
    material: str
    key_hint: str
    files: tuple[tuple[str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": str(self.bundle_dir),
            "signature": str(self.signature_path),
            "root_digest": self.root_digest,
            "subject": {"name": self.subject_name, "sha256": self.subject_digest},
            "verification_material": self.material,
            "key_hint": self.key_hint,
            "files": [{"name": n, "sha256": d} for n, d in self.files],
        }


# --------------------------------------------------------------------------- keys


def _read_key_bytes(source: bytes | str | os.PathLike[str], what: str) -> tuple[bytes, str]:
    if isinstance(source, bytes):
        return source, f"<{what} bytes>"
    path = Path(source)
    try:
        return path.read_bytes(), str(path)
    except OSError as exc:
        raise AsaError(
            f"cannot read the {what} file: {exc.strerror or exc}",
            code="SIGNATURE_KEY_INVALID",
            file=str(path),
            hint=f"pass the path of a PEM-encoded {what}",
        ) from exc


def _check_curve(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey, where: str) -> None:
    if key.curve.name not in _SUPPORTED_CURVES:
        raise AsaError(
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
        raise AsaError(
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
        raise AsaError(
            f"cannot load the public key: {exc}",
            code="SIGNATURE_KEY_INVALID",
            file=where,
            hint="pass a PEM-encoded SubjectPublicKeyInfo ECDSA public key",
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise _not_ec("public", key, where)
    _check_curve(key, where)
    return key


def _not_ec(kind: str, key: object, where: str) -> AsaError:
    return AsaError(
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


def _ecdsa(key: ec.EllipticCurvePublicKey, *, deterministic: bool = False) -> ec.ECDSA:
    algorithm = _SUPPORTED_CURVES[key.curve.name]()
    if deterministic:
        return ec.ECDSA(algorithm, deterministic_signing=True)
    return ec.ECDSA(algorithm)


# ----------------------------------------------------------------------- hashing


def _bundle_dir(bundle_dir: str | os.PathLike[str]) -> Path:
    path = Path(bundle_dir)
    if path.is_symlink():
        raise SignatureError(
            "the bundle directory is a symbolic link",
            code="PATH_SYMLINK",
            file=str(path),
            hint="pass the real directory",
        )
    if not path.is_dir():
        raise SignatureError(
            "the bundle directory does not exist or is not a directory",
            code="BUNDLE_NOT_FOUND",
            file=str(path),
            hint="pass the path of a bundle directory",
        )
    return path


def default_signature_path(bundle_dir: str | os.PathLike[str]) -> Path:
    """``<bundle>/model.sig``."""
    return Path(bundle_dir) / C.SIGNATURE_FILE


def _list_files(bundle: Path) -> list[str]:
    """Relative POSIX names of every regular file under ``bundle``, except the root signature."""
    names: list[str] = []

    def walk(directory: Path, prefix: str) -> None:
        with os.scandir(directory) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                name = prefix + entry.name
                if entry.is_symlink():
                    raise SignatureError(
                        "symbolic links are not allowed in a bundle",
                        code="PATH_SYMLINK",
                        file=name,
                        hint="replace the link by the file it points to",
                    )
                if entry.is_dir(follow_symlinks=False):
                    walk(Path(entry.path), name + "/")
                elif entry.is_file(follow_symlinks=False):
                    if name != C.SIGNATURE_FILE:
                        names.append(name)
                else:
                    raise SignatureError(
                        "the bundle holds something that is not a regular file or directory",
                        code="PATH_NOT_REGULAR",
                        file=name,
                        hint="remove it from the bundle directory",
                    )

    try:
        walk(bundle, "")
    except OSError as exc:
        raise SignatureError(
            f"cannot list the bundle directory: {exc.strerror or exc}",
            code="IO_ERROR",
            file=str(bundle),
        ) from exc
    return sorted(names, key=_path_key)


def _path_key(name: str) -> tuple[str, ...]:
    # model_signing sorts resources by PurePosixPath, i.e. by path components.
    return tuple(name.split("/"))


def _sha256_file(bundle: Path, name: str) -> str:
    path = bundle / name
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        code = "PATH_SYMLINK" if os.path.islink(path) else "IO_ERROR"
        raise SignatureError(
            f"cannot open the file: {exc.strerror or exc}", code=code, file=name
        ) from exc
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise SignatureError("not a regular file", code="PATH_NOT_REGULAR", file=name)
        digest = hashlib.sha256()
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_bundle_files(bundle_dir: str | os.PathLike[str]) -> dict[str, str]:
    """sha256 (hex) of every file of the bundle directory except ``model.sig``, by name."""
    bundle = _bundle_dir(bundle_dir)
    return {name: _sha256_file(bundle, name) for name in _list_files(bundle)}


def root_digest_of_dir(bundle_dir: str | os.PathLike[str]) -> str:
    """Root digest (``sha256:<hex>``) of the bundle in ``bundle_dir``: sha256 of its manifest."""
    bundle = _bundle_dir(bundle_dir)
    manifest = bundle / C.MANIFEST_FILE
    if manifest.is_symlink():
        raise SignatureError(
            "the manifest is a symbolic link", code="PATH_SYMLINK", file=C.MANIFEST_FILE
        )
    if not manifest.is_file():
        raise SignatureError(
            "the bundle has no manifest file",
            code="MANIFEST_MISSING",
            file=C.MANIFEST_FILE,
            hint="pass the directory of an asa-bundle",
        )
    if manifest.stat().st_size > C.MAX_MANIFEST_BYTES:
        raise SignatureError(
            f"the manifest is larger than {C.MAX_MANIFEST_BYTES} bytes",
            code="MANIFEST_TOO_LARGE",
            file=C.MANIFEST_FILE,
        )
    return root_digest(manifest.read_bytes())


# --------------------------------------------------------------------- statement


def _subject_digest(resources: Iterable[str]) -> str:
    hasher = hashlib.sha256()
    for digest_hex in resources:
        hasher.update(bytes.fromhex(digest_hex))
    return hasher.hexdigest()


def build_statement(name: str, files: dict[str, str]) -> dict[str, Any]:
    """The in-toto statement model_signing writes for ``files`` (name -> sha256 hex)."""
    ordered = sorted(files, key=_path_key)
    return {
        "_type": IN_TOTO_STATEMENT_TYPE,
        "subject": [
            {"name": name, "digest": {"sha256": _subject_digest(files[n] for n in ordered)}}
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": SERIALIZATION_METHOD,
                "hash_type": HASH_TYPE,
                "allow_symlinks": False,
                "ignore_paths": [C.SIGNATURE_FILE],
            },
            "resources": [{"name": n, "algorithm": HASH_TYPE, "digest": files[n]} for n in ordered],
        },
    }


def dsse_pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding (the bytes that are signed)."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


# ----------------------------------------------------------------------- signing


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


def _resolve_signature_path(bundle: Path, signature_path: str | os.PathLike[str] | None) -> Path:
    if signature_path is None:
        return default_signature_path(bundle)
    path = Path(signature_path)
    if _inside(path, bundle) and path.resolve() != default_signature_path(bundle).resolve():
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
    private_key_pem: PrivateKeySource,
    *,
    signature_path: str | os.PathLike[str] | None = None,
    password: bytes | None = None,
) -> Path:
    """Sign every file of ``bundle_dir``; write the signature and return its path.

    ``private_key_pem`` is PEM bytes, the path of a PEM file or an
    ``EllipticCurvePrivateKey``. The signature goes to ``<bundle>/model.sig``
    unless ``signature_path`` names a place outside the bundle. The result is
    accepted by ``model_signing verify key``. ECDSA signing is deterministic
    (RFC 6979) where the crypto backend supports it, so the same bundle, key
    and directory name give the same bytes.
    """
    bundle = _bundle_dir(bundle_dir)
    key = load_private_key(private_key_pem, password=password)
    target = _resolve_signature_path(bundle, signature_path)
    if not (bundle / C.MANIFEST_FILE).is_file():
        raise SignatureError(
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
        raw_sig = key.sign(pae, _ecdsa(key.public_key(), deterministic=True))
    except crypto_exceptions.UnsupportedAlgorithm:  # pragma: no cover - old OpenSSL
        raw_sig = key.sign(pae, _ecdsa(key.public_key()))
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


# ------------------------------------------------------------------ verification


def _format_error(message: str, where: str, hint: str | None = None) -> SignatureError:
    return SignatureError(
        message,
        code="SIGNATURE_FORMAT",
        file=where,
        hint=hint or "re-create the signature with `asa sign` or `model_signing sign key`",
    )


def _get(obj: Any, key: str, kind: type | tuple[type, ...], where: str, path: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise _format_error(f"missing member {path}", where)
    value = obj[key]
    if not isinstance(value, kind):
        raise _format_error(f"member {path} has the wrong type", where)
    return value


def _b64decode(text: str, where: str, path: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise _format_error(f"member {path} is not valid base64", where) from exc


def _read_json(data: bytes, where: str, what: str) -> Any:
    try:
        return loads_strict(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _format_error(f"the {what} is not valid UTF-8", where) from exc
    except (json.JSONDecodeError, DuplicateKeyError, NonFiniteError) as exc:
        raise _format_error(f"the {what} is not valid strict JSON: {exc}", where) from exc


def _read_signature_file(path: Path, bundle: Path) -> bytes:
    where = str(path)
    if path.is_symlink() and _inside(path.parent, bundle):
        raise SignatureError(
            "the signature file is a symbolic link", code="PATH_SYMLINK", file=where
        )
    if not path.exists():
        raise SignatureError(
            "the bundle has no signature",
            code="SIGNATURE_MISSING",
            file=where,
            hint="sign the bundle with `asa sign` or pass --signature",
        )
    if not path.is_file():
        raise _format_error("the signature is not a regular file", where)
    if path.stat().st_size > MAX_SIGNATURE_BYTES:
        raise _format_error(f"the signature file is larger than {MAX_SIGNATURE_BYTES} bytes", where)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SignatureError(
            f"cannot read the signature: {exc.strerror or exc}", code="IO_ERROR", file=where
        ) from exc


# A verification-material handler checks the envelope signature and returns
# (material kind, identity of the verifying key or certificate).
_MaterialVerifier = Callable[
    [dict[str, Any], bytes, bytes, Sequence[ec.EllipticCurvePublicKey], str], tuple[str, str]
]


def _verify_public_key_material(
    material: dict[str, Any],
    pae: bytes,
    raw_sig: bytes,
    trusted: Sequence[ec.EllipticCurvePublicKey],
    where: str,
) -> tuple[str, str]:
    public_key = material["publicKey"]
    if not isinstance(public_key, dict):
        raise _format_error("verificationMaterial.publicKey is not an object", where)
    hint = public_key.get("hint")
    by_hint = {public_key_hint(k): k for k in trusted}
    if hint is not None and hint != "":
        if not isinstance(hint, str):
            raise _format_error("verificationMaterial.publicKey.hint is not a string", where)
        key = by_hint.get(hint)
        if key is None:
            raise SignatureError(
                f"the signature names key {hint[:16]}..., which is not among the "
                f"{len(trusted)} trusted key(s)",
                code="SIGNATURE_UNTRUSTED_KEY",
                file=where,
                hint="pass the signer's public key with --public-key if you trust it",
            )
        candidates = [(hint, key)]
    else:  # older signatures carry no hint: try every trusted key
        candidates = list(by_hint.items())
    for key_hint, key in candidates:
        try:
            key.verify(raw_sig, pae, _ecdsa(key))
        except (crypto_exceptions.InvalidSignature, ValueError):
            continue
        return "publicKey", key_hint
    raise SignatureError(
        "the signature does not verify under the trusted key(s): the signature or the "
        "signed statement was altered",
        code="SIGNATURE_INVALID",
        file=where,
        hint="re-sign the bundle; do not edit the signature file",
    )


_MATERIAL_VERIFIERS: dict[str, _MaterialVerifier] = {
    "publicKey": _verify_public_key_material,
}
_FUTURE_MATERIAL = ("certificate", "x509CertificateChain")


def _verify_envelope(
    document: Any, trusted: Sequence[ec.EllipticCurvePublicKey], where: str
) -> tuple[bytes, str, str]:
    """Check the bundle and envelope; return (payload, material kind, key hint)."""
    if not isinstance(document, dict):
        raise _format_error("the signature is not a JSON object", where)
    media_type = _get(document, "mediaType", str, where, "mediaType")
    if media_type != SIGSTORE_BUNDLE_MEDIA_TYPE:
        raise _format_error(
            f"unsupported Sigstore bundle media type {media_type!r} "
            f"(expected {SIGSTORE_BUNDLE_MEDIA_TYPE!r})",
            where,
        )
    material = _get(document, "verificationMaterial", dict, where, "verificationMaterial")
    envelope = _get(document, "dsseEnvelope", dict, where, "dsseEnvelope")
    payload_type = _get(envelope, "payloadType", str, where, "dsseEnvelope.payloadType")
    if payload_type != DSSE_PAYLOAD_TYPE:
        raise _format_error(f"unsupported DSSE payload type {payload_type!r}", where)
    payload = _b64decode(
        _get(envelope, "payload", str, where, "dsseEnvelope.payload"), where, "dsseEnvelope.payload"
    )
    signatures = _get(envelope, "signatures", list, where, "dsseEnvelope.signatures")
    if len(signatures) != 1:
        raise _format_error(
            f"the envelope holds {len(signatures)} signatures; exactly one is supported", where
        )
    raw_sig = _b64decode(
        _get(signatures[0], "sig", str, where, "dsseEnvelope.signatures[0].sig"),
        where,
        "dsseEnvelope.signatures[0].sig",
    )
    kinds = [k for k in _MATERIAL_VERIFIERS if k in material]
    if len(kinds) != 1:
        future = [k for k in _FUTURE_MATERIAL if k in material]
        if future:
            raise _format_error(
                f"verification material {future[0]!r} (certificate / keyless signing) is not "
                "supported; only key-based signatures are",
                where,
                hint="sign with a key: `asa sign` or `model_signing sign key`",
            )
        raise _format_error("verificationMaterial names no (or more than one) public key", where)
    pae = dsse_pae(payload_type, payload)
    kind, key_hint = _MATERIAL_VERIFIERS[kinds[0]](material, pae, raw_sig, trusted, where)
    return payload, kind, key_hint


def _valid_name(name: str) -> bool:
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _parse_statement(payload: bytes, where: str) -> tuple[str, str, dict[str, str]]:
    """Return (subject name, subject sha256, files) of a signed statement."""
    statement = _read_json(payload, where, "signed statement")
    if not isinstance(statement, dict):
        raise _format_error("the signed statement is not a JSON object", where)
    if _get(statement, "_type", str, where, "_type") != IN_TOTO_STATEMENT_TYPE:
        raise _format_error(f"the statement is not an in-toto {IN_TOTO_STATEMENT_TYPE}", where)
    predicate_type = _get(statement, "predicateType", str, where, "predicateType")
    if predicate_type != PREDICATE_TYPE:
        raise _format_error(
            f"unsupported predicate type {predicate_type!r} (expected {PREDICATE_TYPE!r})", where
        )
    subjects = _get(statement, "subject", list, where, "subject")
    if len(subjects) != 1:
        raise _format_error(f"the statement has {len(subjects)} subjects; expected one", where)
    subject_name = _get(subjects[0], "name", str, where, "subject[0].name")
    digest = _get(subjects[0], "digest", dict, where, "subject[0].digest")
    subject_digest = _get(digest, "sha256", str, where, "subject[0].digest.sha256")
    predicate = _get(statement, "predicate", dict, where, "predicate")
    ser = _get(predicate, "serialization", dict, where, "predicate.serialization")
    method = _get(ser, "method", str, where, "predicate.serialization.method")
    hash_type = _get(ser, "hash_type", str, where, "predicate.serialization.hash_type")
    if method != SERIALIZATION_METHOD or hash_type != HASH_TYPE:
        raise _format_error(
            f"unsupported serialization method={method!r} hash_type={hash_type!r}",
            where,
            hint="sign with file serialization and sha256 (the model_signing default)",
        )
    resources = _get(predicate, "resources", list, where, "predicate.resources")
    if len(resources) > C.MAX_FILES:
        raise _format_error(
            f"the statement lists {len(resources)} files (cap {C.MAX_FILES})", where
        )
    files: dict[str, str] = {}
    ordered: list[str] = []
    for i, resource in enumerate(resources):
        name = _get(resource, "name", str, where, f"predicate.resources[{i}].name")
        algorithm = _get(resource, "algorithm", str, where, f"predicate.resources[{i}].algorithm")
        value = _get(resource, "digest", str, where, f"predicate.resources[{i}].digest")
        if algorithm != HASH_TYPE or len(value) != 64 or not set(value) <= _HEX:
            raise _format_error(f"resource {name!r} does not carry a lowercase hex sha256", where)
        if not _valid_name(name):
            raise _format_error(f"resource name {name!r} is not a canonical relative path", where)
        if name in files:
            raise _format_error(f"resource {name!r} is listed twice", where)
        files[name] = value
        ordered.append(value)
    if _subject_digest(ordered) != subject_digest:
        raise _format_error("the subject digest does not match the listed resources", where)
    return subject_name, subject_digest, files


def _compare(bundle: Path, signed: dict[str, str], digests: Mapping[str, str] | None = None) -> list[Problem]:
    """Findings, ``manifest.json`` first, then by path; only files in both are hashed.

    ``digests`` (name -> sha256 of every file, signature excluded) replaces
    reading the directory: the caller already read and hashed the files.
    """
    present = list(digests) if digests is not None else _list_files(bundle)
    problems: list[Problem] = []
    for name in sorted(
        set(present) | set(signed), key=lambda n: (n != C.MANIFEST_FILE, _path_key(n))
    ):
        if name not in signed:
            problems.append(
                Problem(
                    "SIGNATURE_FILE_EXTRA",
                    "the file is not covered by the signature",
                    name,
                    "remove the file or re-sign the bundle",
                )
            )
        elif name not in present:
            problems.append(
                Problem(
                    "SIGNATURE_FILE_MISSING",
                    "the file is covered by the signature but missing",
                    name,
                    "restore the file from the signed bundle",
                )
            )
        else:
            actual = digests[name] if digests is not None else _sha256_file(bundle, name)
            if actual != signed[name]:
                problems.append(
                    Problem(
                        "SIGNATURE_FILE_MODIFIED",
                        f"sha256 {actual} differs from the signed {signed[name]}",
                        name,
                        "the file changed after signing; restore it or re-sign",
                    )
                )
    return problems


def verify_bundle_signature(
    bundle_dir: str | os.PathLike[str],
    public_keys: Sequence[KeySource],
    *,
    signature_path: str | os.PathLike[str] | None = None,
    file_digests: Mapping[str, str] | None = None,
) -> VerifiedSignature:
    """Verify the signature of ``bundle_dir`` against trusted ``public_keys``.

    ``file_digests`` maps every file of the bundle (the signature excepted)
    to the sha256 its caller computed from the bytes it read; the statement
    is then checked against exactly those bytes instead of a second read.

    Accepts signatures written by :func:`sign_bundle` and by
    ``model_signing sign key``. Raises :class:`SignatureError` with code
    SIGNATURE_MISSING, SIGNATURE_FORMAT, SIGNATURE_UNTRUSTED_KEY,
    SIGNATURE_INVALID, SIGNATURE_FILE_MODIFIED, SIGNATURE_FILE_EXTRA or
    SIGNATURE_FILE_MISSING (every file finding is in ``problems``; a signature
    over another bundle reports ``manifest.json`` as modified, first), or
    PATH_SYMLINK / PATH_NOT_REGULAR / BUNDLE_NOT_FOUND / MANIFEST_MISSING.
    """
    if isinstance(public_keys, (bytes, str, os.PathLike, ec.EllipticCurvePublicKey)):
        public_keys = [public_keys]
    if not public_keys:
        raise UsageError("no trusted public key was given", hint="pass at least one --public-key")
    trusted = [load_public_key(k) for k in public_keys]
    bundle = _bundle_dir(bundle_dir)
    sig_path = (
        Path(signature_path) if signature_path is not None else default_signature_path(bundle)
    )
    where = str(sig_path)
    document = _read_json(_read_signature_file(sig_path, bundle), where, "signature file")
    payload, material, key_hint = _verify_envelope(document, trusted, where)
    subject_name, subject_digest, signed = _parse_statement(payload, where)
    problems = _compare(bundle, signed, file_digests)
    if problems:
        if problems[0].file == C.MANIFEST_FILE and problems[0].code == "SIGNATURE_FILE_MODIFIED":
            this = (
                DIGEST_PREFIX + file_digests[C.MANIFEST_FILE]
                if file_digests is not None
                else root_digest_of_dir(bundle)
            )
            problems[0] = Problem(
                problems[0].code,
                f"the signature covers another bundle (root digest {DIGEST_PREFIX}{signed[C.MANIFEST_FILE]}, "
                f"this bundle is {this})",
                C.MANIFEST_FILE,
                "use the signature made for this bundle, or re-sign it",
            )
        raise SignatureError.from_problems(problems)
    if C.MANIFEST_FILE not in signed:
        raise SignatureError(
            "the signed directory has no manifest file",
            code="MANIFEST_MISSING",
            file=C.MANIFEST_FILE,
            hint="sign a complete asa-bundle directory",
        )
    return VerifiedSignature(
        bundle_dir=bundle,
        signature_path=sig_path,
        root_digest=DIGEST_PREFIX + signed[C.MANIFEST_FILE],
        subject_name=subject_name,
        subject_digest=subject_digest,
        material=material,
        key_hint=key_hint,
        files=tuple((n, signed[n]) for n in sorted(signed, key=_path_key)),
    )
