"""`asa sign` and `asa verify`: sign a bundle, verify its signature.

Both check the bundle first, as `asa validate` does: a bundle that fails is
not signed, and `asa verify` fails on it even when the signature itself
verifies (SIGNATURE_BUNDLE_INVALID; the report says which of the two checks
failed: ``checks.integrity`` and ``checks.signature`` in the JSON).

Exit status: 0 success, 1 a check failed or the input was refused (the
bundle or signature is bad, or the signature exists and --force was not
given), 2 usage error (bad arguments, unreadable or unsupported key). The
report goes to stdout (text, or with --json the envelope of
``asa_format.cli.report``, also on failure), diagnostics to stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from asa_format.cli.report import Result, failed_result, write_report
from asa_format.cli.support import EXIT_FAILED, EXIT_OK, EXIT_USAGE, exit_code_for, fail
from asa_format.cli.textsafe import safe_text
from asa_format.errors import AsaError
from asa_format.signing import (
    load_private_key,
    recover_signature,
    root_digest_of_dir,
    sign_bundle,
    verify_bundle,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "exit_code_for",
    "root_digest_of_dir",
    "sign_command",
    "verify_command",
]


_path = click.Path(path_type=Path)


@click.command("sign")
@click.argument("bundle", type=_path)
@click.option(
    "--private-key",
    "private_key",
    required=True,
    type=_path,
    help="PEM-encoded ECDSA private key (P-256, P-384 or P-521).",
)
@click.option(
    "--signature",
    type=_path,
    default=None,
    help="Where to write the signature (default: BUNDLE/model.sig; elsewhere it must be "
    "outside the bundle).",
)
@click.option(
    "--password-env",
    metavar="VAR",
    default=None,
    help="Name of an environment variable holding the private key's password.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing signature file (only a signature file, never another file).",
)
@click.option("--json", "as_json", is_flag=True, help="Write the result as JSON to stdout.")
def sign_command(
    bundle: Path,
    private_key: Path,
    signature: Path | None,
    password_env: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Check BUNDLE, then sign every file of it (OpenSSF model-signing compatible signature).

    A bundle that fails its checks (those of asa validate) is not signed. An
    existing signature is kept unless --force is given.
    """
    password: bytes | None = None
    if password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise click.UsageError(f"environment variable {password_env} is not set")
        password = value.encode("utf-8")
    try:
        key = load_private_key(private_key, password=password)  # key errors (exit 2) come first
        for note in recover_signature(bundle, signature):
            click.echo(f"note: {safe_text(note)}", err=True)
        path = sign_bundle(bundle, key, signature_path=signature, replace=force)
        digest = root_digest_of_dir(bundle)
    except AsaError as error:
        if exit_code_for(error) != EXIT_FAILED:
            fail(error)
        result = failed_result(str(bundle), error)
    else:
        result = Result(
            path=str(bundle),
            fields={"signature": str(path), "root_digest": digest},
            text=f"signed {safe_text(bundle)}: signature {safe_text(path)}, root digest {digest}\n",
        )
    sys.exit(write_report("sign", [result], as_json, sys.stdout))


@click.command("verify")
@click.argument("bundle", type=_path)
@click.option(
    "--public-key",
    "public_keys",
    multiple=True,
    required=True,
    type=_path,
    help="Trusted PEM public key; repeat to trust several.",
)
@click.option(
    "--signature",
    type=_path,
    default=None,
    help="Signature to check (default: BUNDLE/model.sig).",
)
@click.option("--json", "as_json", is_flag=True, help="Write the result as JSON to stdout.")
def verify_command(
    bundle: Path, public_keys: tuple[Path, ...], signature: Path | None, as_json: bool
) -> None:
    """Check BUNDLE and verify its signature against trusted public keys.

    Both must pass: the bundle's own checks (those of asa validate) and the
    signature. Exit 0 verified, 1 the bundle or its signature failed (the
    report says which), 2 usage error (e.g. an unreadable key).
    """
    try:
        outcome = verify_bundle(bundle, list(public_keys), signature_path=signature)
    except AsaError as error:
        if exit_code_for(error) != EXIT_FAILED:
            fail(error)
        result = failed_result(str(bundle), error)
    else:
        fields: dict[str, Any] = {"root_digest": outcome.root_digest, "checks": outcome.checks()}
        if outcome.ok:
            verified = outcome.signature
            assert verified is not None
            result = Result(
                path=str(bundle),
                fields={**verified.to_dict(), **fields},
                text=f"ok    {safe_text(bundle)}  (bundle checked; signature "
                f"{safe_text(verified.signature_path)} verified: key "
                f"{verified.key_hint[:16]}..., {len(verified.files)} files, "
                f"{verified.root_digest})\n",
            )
        else:
            result = failed_result(str(bundle), outcome.error(), **fields)
    sys.exit(write_report("verify", [result], as_json, sys.stdout))
