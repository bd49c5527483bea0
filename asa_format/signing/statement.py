"""The signed statement: in-toto v1 over the bundle's files, in a DSSE envelope.

The same statement ``model_signing sign key`` writes: predicate type
``https://model_signing/signature/v1.0``, ``files`` serialization with sha256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from asa_format import constants as C
from asa_format.errors import SignatureError
from asa_format.format.jsonio import DuplicateKeyError, NonFiniteError, loads_strict
from asa_format.signing.files import path_key

__all__ = [
    "DSSE_PAYLOAD_TYPE",
    "HASH_TYPE",
    "IN_TOTO_STATEMENT_TYPE",
    "MAX_SIGNATURE_BYTES",
    "PREDICATE_TYPE",
    "SERIALIZATION_METHOD",
    "SIGSTORE_BUNDLE_MEDIA_TYPE",
    "b64decode_member",
    "build_statement",
    "dsse_pae",
    "format_error",
    "get_member",
    "parse_statement",
    "read_strict_json",
    "subject_digest_of",
]

SIGSTORE_BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
DSSE_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
SERIALIZATION_METHOD = "files"
HASH_TYPE = "sha256"
MAX_SIGNATURE_BYTES = C.MAX_SIGNATURE_BYTES
_HEX = frozenset("0123456789abcdef")


def subject_digest_of(resources: Iterable[str]) -> str:
    hasher = hashlib.sha256()
    for digest_hex in resources:
        hasher.update(bytes.fromhex(digest_hex))
    return hasher.hexdigest()


def build_statement(name: str, files: dict[str, str]) -> dict[str, Any]:
    """The in-toto statement model_signing writes for ``files`` (name -> sha256 hex)."""
    ordered = sorted(files, key=path_key)
    return {
        "_type": IN_TOTO_STATEMENT_TYPE,
        "subject": [
            {"name": name, "digest": {"sha256": subject_digest_of(files[n] for n in ordered)}}
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


def format_error(message: str, where: str, hint: str | None = None) -> SignatureError:
    return SignatureError(
        message,
        code="SIGNATURE_FORMAT",
        file=where,
        hint=hint or "re-create the signature with `asa sign` or `model_signing sign key`",
    )


def get_member(obj: Any, key: str, kind: type | tuple[type, ...], where: str, path: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise format_error(f"missing member {path}", where)
    value = obj[key]
    if not isinstance(value, kind):
        raise format_error(f"member {path} has the wrong type", where)
    return value


def b64decode_member(text: str, where: str, path: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    try:
        return base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise format_error(f"member {path} is not valid base64", where) from exc


def read_strict_json(data: bytes, where: str, what: str) -> Any:
    try:
        return loads_strict(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise format_error(f"the {what} is not valid UTF-8", where) from exc
    except (json.JSONDecodeError, DuplicateKeyError, NonFiniteError) as exc:
        raise format_error(f"the {what} is not valid strict JSON: {exc}", where) from exc


def _valid_name(name: str) -> bool:
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def parse_statement(payload: bytes, where: str) -> tuple[str, str, dict[str, str]]:
    """Return (subject name, subject sha256, files) of a signed statement."""
    statement = read_strict_json(payload, where, "signed statement")
    if not isinstance(statement, dict):
        raise format_error("the signed statement is not a JSON object", where)
    if get_member(statement, "_type", str, where, "_type") != IN_TOTO_STATEMENT_TYPE:
        raise format_error(f"the statement is not an in-toto {IN_TOTO_STATEMENT_TYPE}", where)
    predicate_type = get_member(statement, "predicateType", str, where, "predicateType")
    if predicate_type != PREDICATE_TYPE:
        raise format_error(
            f"unsupported predicate type {predicate_type!r} (expected {PREDICATE_TYPE!r})", where
        )
    subjects = get_member(statement, "subject", list, where, "subject")
    if len(subjects) != 1:
        raise format_error(f"the statement has {len(subjects)} subjects; expected one", where)
    subject_name = get_member(subjects[0], "name", str, where, "subject[0].name")
    digest = get_member(subjects[0], "digest", dict, where, "subject[0].digest")
    subject_digest = get_member(digest, "sha256", str, where, "subject[0].digest.sha256")
    predicate = get_member(statement, "predicate", dict, where, "predicate")
    ser = get_member(predicate, "serialization", dict, where, "predicate.serialization")
    method = get_member(ser, "method", str, where, "predicate.serialization.method")
    hash_type = get_member(ser, "hash_type", str, where, "predicate.serialization.hash_type")
    if method != SERIALIZATION_METHOD or hash_type != HASH_TYPE:
        raise format_error(
            f"unsupported serialization method={method!r} hash_type={hash_type!r}",
            where,
            hint="sign with file serialization and sha256 (the model_signing default)",
        )
    resources = get_member(predicate, "resources", list, where, "predicate.resources")
    if len(resources) > C.MAX_FILES:
        raise format_error(f"the statement lists {len(resources)} files (cap {C.MAX_FILES})", where)
    files: dict[str, str] = {}
    ordered: list[str] = []
    for i, resource in enumerate(resources):
        name = get_member(resource, "name", str, where, f"predicate.resources[{i}].name")
        algorithm = get_member(
            resource, "algorithm", str, where, f"predicate.resources[{i}].algorithm"
        )
        value = get_member(resource, "digest", str, where, f"predicate.resources[{i}].digest")
        if algorithm != HASH_TYPE or len(value) != 64 or not set(value) <= _HEX:
            raise format_error(f"resource {name!r} does not carry a lowercase hex sha256", where)
        if not _valid_name(name):
            raise format_error(f"resource name {name!r} is not a canonical relative path", where)
        if name in files:
            raise format_error(f"resource {name!r} is listed twice", where)
        files[name] = value
        ordered.append(value)
    if subject_digest_of(ordered) != subject_digest:
        raise format_error("the subject digest does not match the listed resources", where)
    return subject_name, subject_digest, files
