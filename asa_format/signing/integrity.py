"""Trust what you sign: a bundle is checked before it is signed or its signature trusted.

A signature covers bytes; it says nothing about whether those bytes form a
valid bundle. So ``sign_bundle`` and ``verify_bundle_signature`` (and
``asa sign`` / ``asa verify``) first run the checks of ``asa validate`` on the
bundle (:func:`asa_format.storage.reader.read_bundle_dir`, the one code path of
validate and load): every file against the manifest, the manifest against
the schema, nothing unlisted, every file profile. A bundle that fails them is
never signed, and its signature is never reported as good, whatever it says:
:data:`SIGNATURE_BUNDLE_INVALID`.

The signature is then checked against the digests of the very bytes the
reader checked (one read), so a file swapped between the two checks cannot
slip through.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asa_format.errors import BundleError, Problem, SignatureError
from asa_format.format.digest import DIGEST_PREFIX

if TYPE_CHECKING:
    from asa_format.signing.verify import VerifiedSignature
    from asa_format.storage.reader import ReadResult

__all__ = ["BundleVerification", "check_bundle", "integrity_error"]


def check_bundle(bundle: Path) -> ReadResult:
    """The checks of ``asa validate`` (and ``load_bundle``), graphs evaluated once."""
    from asa_format.storage.reader import read_bundle_dir

    return read_bundle_dir(bundle, verify=True, create_sessions=False, predict_sessions=True)


def _listing(problems: list[Problem], limit: int = 3) -> str:
    shown = [f"{p.code}{f' {p.file}' if p.file else ''}" for p in problems[:limit]]
    more = f" and {len(problems) - limit} more" if len(problems) > limit else ""
    return ", ".join(shown) + more


def integrity_error(
    problems: list[Problem],
    *,
    action: str,
    signature_problems: list[Problem] | None = None,
) -> SignatureError:
    """SIGNATURE_BUNDLE_INVALID, first, then every problem of the bundle (and of its signature).

    ``action`` ends the first sentence: "it was not signed", "its signature is not trusted".
    """
    n = len(problems)
    message = f"the bundle fails {n} check{'s' if n != 1 else ''} ({_listing(problems)}): {action}"
    if signature_problems is not None:
        message += (
            f"; the signature also fails ({_listing(signature_problems)})"
            if signature_problems
            else "; the signature itself verifies: the files were changed before signing, "
            "or the signer signed a bundle that was not checked"
        )
    summary = Problem(
        "SIGNATURE_BUNDLE_INVALID",
        message,
        None,
        "fix the problems listed (asa validate shows them), or rebuild the bundle, then sign it",
    )
    return SignatureError(
        summary.message,
        code="SIGNATURE_BUNDLE_INVALID",
        hint=summary.hint,
        problems=[summary, *problems, *(signature_problems or [])],
    )


@dataclass(frozen=True)
class BundleVerification:
    """The two verdicts of ``asa verify``: the bundle's own checks and its signature.

    ``integrity`` holds the bundle's problems (empty: every file matches the
    manifest, the manifest the schema, nothing unlisted); ``signature`` is set
    when the signature verifies under a trusted key and covers exactly the
    bundle's files; ``signature_problems`` says why not otherwise.
    ``root_digest`` is the digest of the manifest that was read (what
    ``asa inspect`` prints), None if there is none.
    """

    integrity: tuple[Problem, ...]
    signature: VerifiedSignature | None
    signature_problems: tuple[Problem, ...]
    root_digest: str | None

    @property
    def integrity_ok(self) -> bool:
        return not self.integrity

    @property
    def signature_ok(self) -> bool:
        return self.signature is not None

    @property
    def ok(self) -> bool:
        return self.integrity_ok and self.signature_ok

    def error(self) -> BundleError:
        """The error that says which check failed (call only when not ``ok``): a
        :class:`SignatureError`, or a :class:`BundleError` for a path problem the
        signature check met (a link in the bundle)."""
        if not self.integrity_ok:
            return integrity_error(
                list(self.integrity),
                action="its signature is not trusted",
                signature_problems=list(self.signature_problems),
            )
        return SignatureError.from_problems(list(self.signature_problems))

    def checks(self) -> dict[str, Any]:
        """``{"integrity": {...}, "signature": {...}}`` for a report."""
        return {
            "integrity": {
                "ok": self.integrity_ok,
                "codes": sorted({p.code for p in self.integrity}),
            },
            "signature": {
                "ok": self.signature_ok,
                "codes": sorted({p.code for p in self.signature_problems}),
            },
        }


def manifest_digest(file_sha256: Mapping[str, str]) -> str | None:
    from asa_format import constants as C

    digest = file_sha256.get(C.MANIFEST_FILE)
    return DIGEST_PREFIX + digest if digest is not None else None
