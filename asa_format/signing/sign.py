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
from asa_format.errors import AsaError, Problem, UsageError
from asa_format.format.jsonio import loads_strict
from asa_format.signing.files import (
    checked_bundle_dir,
    default_signature_path,
    is_inside,
)
from asa_format.signing.integrity import check_bundle, integrity_error
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
from asa_format.storage.destination import StagedFile, recover, regular_file
from asa_format.storage.reader import open_regular

__all__ = ["recover_signature", "sign_bundle"]


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


def _signature_problem(path: Path) -> str | None:
    """Why ``path`` is not a signature file that ``--force`` may replace (None: it is one).

    A signature file is a regular file (not a link), at most
    MAX_SIGNATURE_BYTES long, holding one strict JSON object whose
    ``mediaType`` is a Sigstore bundle's (``application/vnd.dev.sigstore.bundle``,
    any version: what ``asa sign``, ``model_signing`` and ``cosign`` write).
    """
    st = regular_file(path)
    if st is None:
        return "it is not a regular file"
    if st.st_size > C.MAX_SIGNATURE_BYTES:
        return f"it is larger than a signature ({st.st_size} bytes)"
    opened = open_regular(path, path.name)
    if isinstance(opened, Problem):
        return opened.message
    fd, _ = opened
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(C.MAX_SIGNATURE_BYTES + 1)
    try:
        document = loads_strict(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "it is not JSON"
    media_type = document.get("mediaType") if isinstance(document, dict) else None
    if not isinstance(media_type, str) or not media_type.startswith(_SIGSTORE_PREFIX):
        return "it is not a Sigstore bundle (no Sigstore mediaType)"
    return None


_SIGSTORE_PREFIX = "application/vnd.dev.sigstore.bundle"


def _check_replaceable_signature(path: Path) -> None:
    problem = _signature_problem(path)
    if problem is not None:
        raise UsageError(
            f"{str(path)!r} exists and is not a signature file ({problem}); "
            "--force only replaces a signature",
            code="DESTINATION_WRONG_KIND",
            file=str(path),
            hint="choose another --signature path, or move the file away yourself",
        )


def sign_bundle(
    bundle_dir: str | os.PathLike[str],
    private_key: ec.EllipticCurvePrivateKey,
    *,
    signature_path: str | os.PathLike[str] | None = None,
    replace: bool = True,
    password: bytes | None = None,
    private_key_pem: PrivateKeySource | None = None,
) -> Path:
    """Check ``bundle_dir``, sign every file of it with ``private_key``; return the signature's path.

    The bundle is checked first, as ``asa validate`` checks it (every file
    against the manifest, the manifest against the schema, nothing
    unlisted); a bundle that fails is not signed (SIGNATURE_BUNDLE_INVALID,
    its problems listed) and nothing is written. The statement covers the
    digests of the bytes that were checked.

    ``private_key`` is an ECDSA key object; read one from a PEM file or bytes
    with :func:`~asa_format.signing.keys.load_private_key` (which takes the
    password of an encrypted key). The signature goes to ``<bundle>/model.sig``
    unless ``signature_path`` names a place outside the bundle. An existing
    signature file there is replaced (``replace=False``: refused,
    SIGNATURE_EXISTS, also when it appears while the signature is written);
    a file there that is not a signature (see :func:`_signature_problem`) is
    never replaced (DESTINATION_WRONG_KIND). The file is written in a private
    temporary folder next to the destination (beside the bundle, never inside
    it) and moved into place; its mode is 0644.

    The result is accepted by ``model_signing verify key``. ECDSA signing is
    deterministic (RFC 6979) where the crypto backend supports it, so the
    same bundle, key and directory name give the same bytes.

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
            code="DESTINATION_WRONG_KIND",
            file=str(target_arg),
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
    exists = target.exists() or target.is_symlink()
    if exists and not replace:
        raise _exists(target)
    if exists:
        _check_replaceable_signature(target)
    checked = check_bundle(bundle)
    if checked.problems:
        raise integrity_error(list(checked.problems), action="it was not signed")
    files = {n: d for n, d in checked.file_sha256.items() if n != C.SIGNATURE_FILE}
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
    _write_signature(bundle, target, data, replace=replace)
    return target


def _exists(target: Path) -> UsageError:
    return UsageError(
        f"the signature file {str(target)!r} already exists",
        code="SIGNATURE_EXISTS",
        file=str(target),
        hint="pass --force (sign_bundle: replace=True) to replace it, or --signature to "
        "write it elsewhere",
    )


def _staging_folder(bundle: Path, target: Path) -> Path:
    """Where the signature is prepared: never inside the bundle (beside it for
    ``<bundle>/model.sig``), else the signature's own folder."""
    return bundle.resolve().parent if is_inside(target.parent, bundle) else target.parent


def recover_signature(
    bundle_dir: str | os.PathLike[str], signature_path: str | os.PathLike[str] | None = None
) -> list[str]:
    """Remove what a killed ``sign_bundle`` of this signature left (only its own temporary
    folder, only once that process no longer runs); returns notes for a person.
    ``sign_bundle`` does it too, silently."""
    bundle = Path(bundle_dir)
    target = _resolve_signature_path(bundle, signature_path)
    return recover(target, near=_staging_folder(bundle, target))


def _write_signature(bundle: Path, target: Path, data: bytes, *, replace: bool) -> None:
    near = _staging_folder(bundle, target)
    try:
        with StagedFile(target, near=near) as staged:
            staged.write(data)
            staged.commit(replace=replace, check=_check_replaceable_signature)
    except FileExistsError as exc:  # it appeared while the signature was written
        raise _exists(target) from exc
    except OSError as exc:
        raise AsaError(
            f"cannot write the signature: {exc.strerror or exc}",
            code="IO_ERROR",
            file=str(target),
            hint="check that the folder (and, for BUNDLE/model.sig, the bundle's parent "
            "folder, where the temporary file is written) exists and is writable",
        ) from exc
