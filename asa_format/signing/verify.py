"""Verify a bundle signature against trusted keys and the bundle's files."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import exceptions as crypto_exceptions
from cryptography.hazmat.primitives.asymmetric import ec

from asa_format import constants as C
from asa_format.errors import BundleError, Problem, SignatureError, UsageError, problems_of
from asa_format.format.digest import DIGEST_PREFIX
from asa_format.signing.files import (
    checked_bundle_dir,
    default_signature_path,
    is_inside,
    list_bundle_files,
    path_key,
    root_digest_of_dir,
    sha256_file,
)
from asa_format.signing.integrity import BundleVerification, check_bundle, manifest_digest
from asa_format.signing.keys import KeySource, ecdsa_algorithm, load_public_key, public_key_hint
from asa_format.signing.statement import (
    DSSE_PAYLOAD_TYPE,
    MAX_SIGNATURE_BYTES,
    SIGSTORE_BUNDLE_MEDIA_TYPE,
    b64decode_member,
    dsse_pae,
    format_error,
    get_member,
    parse_statement,
    read_strict_json,
)
from asa_format.storage.reader import open_regular

__all__ = ["BundleVerification", "VerifiedSignature", "verify_bundle", "verify_bundle_signature"]


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


def _read_signature_file(path: Path, bundle: Path) -> bytes:
    where = str(path)
    if path.is_symlink() and is_inside(path.parent, bundle):
        raise BundleError("the signature file is a symbolic link", code="PATH_SYMLINK", file=where)
    if not path.exists():
        raise SignatureError(
            "the bundle has no signature",
            code="SIGNATURE_MISSING",
            file=where,
            hint="sign the bundle with `asa sign` or pass --signature",
        )
    opened = open_regular(path, where)  # no links followed, a FIFO does not block
    if isinstance(opened, Problem):
        if opened.code == "PATH_NOT_REGULAR":
            raise format_error("the signature is not a regular file", where)
        raise BundleError.from_problems([opened])
    fd, st = opened
    with os.fdopen(fd, "rb") as handle:
        if st.st_nlink > 1 and is_inside(path.parent, bundle):
            raise BundleError(
                f"the signature file has {st.st_nlink} hard links",
                code="PATH_HARDLINK",
                file=where,
                hint="copy the file instead of hard-linking it",
            )
        if st.st_size > MAX_SIGNATURE_BYTES:
            raise format_error(
                f"the signature file is larger than {MAX_SIGNATURE_BYTES} bytes", where
            )
        try:
            data = handle.read(MAX_SIGNATURE_BYTES + 1)
        except OSError as exc:
            raise SignatureError(
                f"cannot read the signature: {exc.strerror or exc}", code="IO_ERROR", file=where
            ) from exc
    if len(data) > MAX_SIGNATURE_BYTES:
        raise format_error(f"the signature file is larger than {MAX_SIGNATURE_BYTES} bytes", where)
    return data


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
        raise format_error("verificationMaterial.publicKey is not an object", where)
    hint = public_key.get("hint")
    by_hint = {public_key_hint(k): k for k in trusted}
    if hint is not None and hint != "":
        if not isinstance(hint, str):
            raise format_error("verificationMaterial.publicKey.hint is not a string", where)
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
            key.verify(raw_sig, pae, ecdsa_algorithm(key))
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
        raise format_error("the signature is not a JSON object", where)
    media_type = get_member(document, "mediaType", str, where, "mediaType")
    if media_type != SIGSTORE_BUNDLE_MEDIA_TYPE:
        raise format_error(
            f"unsupported Sigstore bundle media type {media_type!r} "
            f"(expected {SIGSTORE_BUNDLE_MEDIA_TYPE!r})",
            where,
        )
    material = get_member(document, "verificationMaterial", dict, where, "verificationMaterial")
    envelope = get_member(document, "dsseEnvelope", dict, where, "dsseEnvelope")
    payload_type = get_member(envelope, "payloadType", str, where, "dsseEnvelope.payloadType")
    if payload_type != DSSE_PAYLOAD_TYPE:
        raise format_error(f"unsupported DSSE payload type {payload_type!r}", where)
    payload = b64decode_member(
        get_member(envelope, "payload", str, where, "dsseEnvelope.payload"),
        where,
        "dsseEnvelope.payload",
    )
    signatures = get_member(envelope, "signatures", list, where, "dsseEnvelope.signatures")
    if len(signatures) != 1:
        raise format_error(
            f"the envelope holds {len(signatures)} signatures; exactly one is supported", where
        )
    raw_sig = b64decode_member(
        get_member(signatures[0], "sig", str, where, "dsseEnvelope.signatures[0].sig"),
        where,
        "dsseEnvelope.signatures[0].sig",
    )
    kinds = [k for k in _MATERIAL_VERIFIERS if k in material]
    if len(kinds) != 1:
        future = [k for k in _FUTURE_MATERIAL if k in material]
        if future:
            raise format_error(
                f"verification material {future[0]!r} (certificate / keyless signing) is not "
                "supported; only key-based signatures are",
                where,
                hint="sign with a key: `asa sign` or `model_signing sign key`",
            )
        raise format_error("verificationMaterial names no (or more than one) public key", where)
    pae = dsse_pae(payload_type, payload)
    kind, key_hint = _MATERIAL_VERIFIERS[kinds[0]](material, pae, raw_sig, trusted, where)
    return payload, kind, key_hint


def _compare(
    bundle: Path, signed: dict[str, str], digests: Mapping[str, str] | None = None
) -> list[Problem]:
    """Findings, ``manifest.json`` first, then by path; only files in both are hashed.

    ``digests`` (name -> sha256 of every file, signature excluded) replaces
    reading the directory: the caller already read and hashed the files.
    """
    present = list(digests) if digests is not None else list_bundle_files(bundle)
    problems: list[Problem] = []
    for name in sorted(
        set(present) | set(signed), key=lambda n: (n != C.MANIFEST_FILE, path_key(n))
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
            actual = digests[name] if digests is not None else sha256_file(bundle, name)
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


def _trusted_keys(
    trusted_keys: Sequence[KeySource] | KeySource | None,
) -> list[ec.EllipticCurvePublicKey]:
    from asa_format.argcheck import key_sources_arg

    trusted_keys = key_sources_arg(trusted_keys, "trusted_keys")  # one key, or a list of them
    if not trusted_keys:
        raise UsageError("no trusted public key was given", hint="pass at least one --public-key")
    return [load_public_key(k) for k in trusted_keys]


def _signature_path(bundle: Path, signature_path: str | os.PathLike[str] | None) -> Path:
    return Path(signature_path) if signature_path is not None else default_signature_path(bundle)


def _verify_signature(
    bundle: Path,
    trusted: Sequence[ec.EllipticCurvePublicKey],
    sig_path: Path,
    file_digests: Mapping[str, str] | None,
) -> VerifiedSignature:
    """The signature alone: envelope, trusted key, statement, and the files it covers."""
    where = str(sig_path)
    document = read_strict_json(_read_signature_file(sig_path, bundle), where, "signature file")
    payload, material, key_hint = _verify_envelope(document, trusted, where)
    subject_name, subject_digest, signed = parse_statement(payload, where)
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
                "the signature covers another bundle "
                f"(root digest {DIGEST_PREFIX}{signed[C.MANIFEST_FILE]}, "
                f"this bundle is {this})",
                C.MANIFEST_FILE,
                "use the signature made for this bundle, or re-sign it",
            )
        raise SignatureError.from_problems(problems)
    if C.MANIFEST_FILE not in signed:
        raise BundleError(
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
        files=tuple((n, signed[n]) for n in sorted(signed, key=path_key)),
    )


def _verification(
    bundle: Path, trusted: Sequence[ec.EllipticCurvePublicKey], sig_path: Path
) -> BundleVerification:
    checked = check_bundle(bundle)
    integrity = list(checked.problems)
    signature: VerifiedSignature | None = None
    signature_problems: list[Problem] = []
    try:
        # an intact bundle: the signature is checked against the bytes just checked (one read);
        # otherwise against the files as they are, to say whether the signature holds as well
        signature = _verify_signature(
            bundle, trusted, sig_path, None if integrity else checked.file_sha256
        )
    except BundleError as exc:  # SignatureError included
        signature_problems = problems_of(exc)
    return BundleVerification(
        integrity=tuple(integrity),
        signature=signature,
        signature_problems=tuple(signature_problems),
        root_digest=manifest_digest(checked.file_sha256),
    )


def verify_bundle(
    bundle_dir: str | os.PathLike[str],
    trusted_keys: Sequence[KeySource] | KeySource,
    *,
    signature_path: str | os.PathLike[str] | None = None,
) -> BundleVerification:
    """Both verdicts on ``bundle_dir``: its own checks and its signature (nothing raised for them).

    Raises only for what is not a verdict: no or unreadable trusted keys
    (UsageError / SIGNATURE_KEY_INVALID) and a bundle path that is missing or
    a link (BUNDLE_NOT_FOUND / PATH_SYMLINK).
    """
    from asa_format.argcheck import optional_path_arg, path_arg

    path_arg(bundle_dir, "bundle_dir")
    optional_path_arg(signature_path, "signature_path")
    trusted = _trusted_keys(trusted_keys)
    bundle = checked_bundle_dir(bundle_dir)
    return _verification(bundle, trusted, _signature_path(bundle, signature_path))


def verify_bundle_signature(
    bundle_dir: str | os.PathLike[str],
    trusted_keys: Sequence[KeySource] | KeySource | None = None,
    *,
    signature_path: str | os.PathLike[str] | None = None,
    file_digests: Mapping[str, str] | None = None,
    public_keys: Sequence[KeySource] | None = None,
) -> VerifiedSignature:
    """Check ``bundle_dir`` and verify its signature against ``trusted_keys`` (public keys).

    The bundle is checked first, as ``asa validate`` checks it (every file
    against the manifest, the manifest against the schema, nothing unlisted):
    a bundle that fails raises SIGNATURE_BUNDLE_INVALID even when the
    signature itself verifies (its ``problems`` list the bundle's problems,
    then the signature's; :func:`verify_bundle` returns both verdicts instead).

    ``trusted_keys`` are key objects, PEM/DER bytes or key file paths (the
    same keyword as :func:`~asa_format.bundle.load_bundle`; ``public_keys=``
    is its deprecated alias). ``file_digests`` maps every file of the bundle
    (the signature excepted) to the sha256 its caller computed from the bytes
    it read *and checked* (``load_bundle`` does): the bundle check is then the
    caller's, and the statement is checked against exactly those bytes
    instead of a second read.

    Accepts signatures written by :func:`sign_bundle` and by
    ``model_signing sign key``. Raises :class:`SignatureError` with code
    SIGNATURE_BUNDLE_INVALID, SIGNATURE_MISSING, SIGNATURE_FORMAT,
    SIGNATURE_UNTRUSTED_KEY, SIGNATURE_INVALID, SIGNATURE_FILE_MODIFIED,
    SIGNATURE_FILE_EXTRA, SIGNATURE_FILE_MISSING (every file finding is in
    ``problems``; a signature over another bundle reports ``manifest.json`` as
    modified, first) or SIGNATURE_KEY_INVALID, or :class:`BundleError` with
    PATH_SYMLINK / BUNDLE_NOT_FOUND (the bundle path itself).
    """
    from asa_format.argcheck import digests_arg, optional_path_arg, path_arg

    path_arg(bundle_dir, "bundle_dir")
    optional_path_arg(signature_path, "signature_path")
    digests_arg(file_digests, "file_digests")
    if public_keys is not None:
        warnings.warn(
            "verify_bundle_signature(public_keys=...) is deprecated; use trusted_keys=",
            DeprecationWarning,
            stacklevel=2,
        )
        if trusted_keys is not None:
            raise UsageError("pass trusted_keys only (public_keys is its deprecated alias)")
        trusted_keys = public_keys
    trusted = _trusted_keys(trusted_keys)
    bundle = checked_bundle_dir(bundle_dir)
    sig_path = _signature_path(bundle, signature_path)
    if file_digests is not None:
        return _verify_signature(bundle, trusted, sig_path, file_digests)
    outcome = _verification(bundle, trusted, sig_path)
    if not outcome.ok:
        raise outcome.error()
    assert outcome.signature is not None
    return outcome.signature
