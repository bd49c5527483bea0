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

Signing and verification first check the bundle as ``asa validate`` does
(every file against the manifest, the manifest against the schema, nothing
unlisted): a bundle that fails is not signed, and its signature is not
trusted whatever it says (SIGNATURE_BUNDLE_INVALID; :func:`verify_bundle`
returns both verdicts). Verification of the signature then checks, in
order: the signature file parses; the verification
material names a trusted key and the ECDSA signature over the DSSE
pre-authentication encoding verifies under it; the statement is well formed
and its subject digest agrees with its resources; every file of the bundle
directory (except the signature file) is covered with the right sha256 and
every covered file exists. Symbolic links and special files are refused.

Only key-based signatures (ECDSA P-256, P-384, P-521) are supported. The
verification material is dispatched on its kind (``publicKey`` today), so
certificate-based (keyless) material can be added without changing the
format.

This module needs only the core dependencies (``cryptography`` for the
keys, and the reader's checks); not ``model_signing``.
"""

from __future__ import annotations

from asa_format.signing.files import (
    default_signature_path,
    hash_bundle_files,
    root_digest_of_dir,
)
from asa_format.signing.keys import (
    KeySource,
    PrivateKeySource,
    load_private_key,
    load_public_key,
    public_key_hint,
)
from asa_format.signing.sign import recover_signature, sign_bundle
from asa_format.signing.statement import (
    DSSE_PAYLOAD_TYPE,
    HASH_TYPE,
    IN_TOTO_STATEMENT_TYPE,
    MAX_SIGNATURE_BYTES,
    PREDICATE_TYPE,
    SERIALIZATION_METHOD,
    SIGSTORE_BUNDLE_MEDIA_TYPE,
    build_statement,
    dsse_pae,
)
from asa_format.signing.verify import (
    BundleVerification,
    VerifiedSignature,
    verify_bundle,
    verify_bundle_signature,
)

__all__ = [
    "DSSE_PAYLOAD_TYPE",
    "HASH_TYPE",
    "IN_TOTO_STATEMENT_TYPE",
    "MAX_SIGNATURE_BYTES",
    "PREDICATE_TYPE",
    "SERIALIZATION_METHOD",
    "SIGSTORE_BUNDLE_MEDIA_TYPE",
    "BundleVerification",
    "KeySource",
    "PrivateKeySource",
    "VerifiedSignature",
    "build_statement",
    "default_signature_path",
    "dsse_pae",
    "hash_bundle_files",
    "load_private_key",
    "load_public_key",
    "public_key_hint",
    "recover_signature",
    "root_digest_of_dir",
    "sign_bundle",
    "verify_bundle",
    "verify_bundle_signature",
]
