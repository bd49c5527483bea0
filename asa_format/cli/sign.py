"""`asa sign` and `asa verify`: sign a bundle, verify its signature.

Exit status: 0 success, 1 a check failed (the bundle or signature is bad,
or the signature exists and --force was not given), 2 usage error (bad
arguments, unreadable or unsupported key). The report goes to stdout
(`asa verify --json`: the envelope of ``asa_format.cli.report``, also on failure),
diagnostics to stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from asa_format import constants as C
from asa_format.cli.report import Result, failed_result, write_report
from asa_format.cli.support import EXIT_FAILED, EXIT_OK, EXIT_USAGE, exit_code_for, fail
from asa_format.cli.textsafe import safe_text
from asa_format.errors import AsaError, UsageError
from asa_format.signing import (
    load_private_key,
    root_digest_of_dir,
    sign_bundle,
    verify_bundle_signature,
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
@click.option("--force", is_flag=True, help="Replace an existing signature file.")
def sign_command(
    bundle: Path, private_key: Path, signature: Path | None, password_env: str | None, force: bool
) -> None:
    """Sign every file of BUNDLE (OpenSSF model-signing compatible signature).

    An existing signature is kept unless --force is given.
    """
    password: bytes | None = None
    if password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise click.UsageError(f"environment variable {password_env} is not set")
        password = value.encode("utf-8")
    target = signature if signature is not None else bundle / C.SIGNATURE_FILE
    try:
        key = load_private_key(private_key, password=password)  # key errors (exit 2) come first
        if not force and (target.exists() or target.is_symlink()):
            raise UsageError(
                f"the signature file {str(target)!r} already exists",
                code="SIGNATURE_EXISTS",
                file=str(target),
                hint="pass --force to replace it, or --signature to write it elsewhere",
            )
        path = sign_bundle(bundle, key, signature_path=signature)
        digest = root_digest_of_dir(bundle)
    except AsaError as error:
        fail(error)
    click.echo(f"signed {safe_text(bundle)}: signature {safe_text(path)}, root digest {digest}")


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
    """Verify the signature of BUNDLE against trusted public keys.

    Exit 0 verified, 1 the bundle or signature failed a check, 2 usage error
    (e.g. an unreadable key).
    """
    try:
        verified = verify_bundle_signature(bundle, list(public_keys), signature_path=signature)
    except AsaError as error:
        if exit_code_for(error) != EXIT_FAILED:
            fail(error)
        result = failed_result(str(bundle), error)
    else:
        result = Result(
            path=str(bundle),
            fields=verified.to_dict(),
            text=f"ok    {safe_text(bundle)}  (signature {safe_text(verified.signature_path)} verified: key "
            f"{verified.key_hint[:16]}..., {len(verified.files)} files, {verified.root_digest})\n",
        )
    sys.exit(write_report("verify", [result], as_json, sys.stdout))
