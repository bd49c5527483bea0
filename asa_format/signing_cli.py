"""`asa sign` and `asa verify`: sign a bundle, verify its signature.

Exit status: 0 success, 1 a check failed (the bundle or signature is bad),
2 usage error (bad arguments, unreadable or unsupported key). The result line
goes to stdout, diagnostics to stderr; `asa verify --json` writes exactly one
JSON object to stdout (also on failure).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from asa_format.errors import AsaError, problems_of
from asa_format.signing import (
    load_private_key,
    root_digest_of_dir,
    sign_bundle,
    verify_bundle_signature,
)

__all__ = ["exit_code_for", "root_digest_of_dir", "sign_command", "verify_command"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_USAGE_CODES = frozenset({"USAGE", "SIGNATURE_KEY_INVALID"})


def exit_code_for(error: AsaError) -> int:
    """2 for usage and key errors, 1 for every failed check."""
    return EXIT_USAGE if error.code in _USAGE_CODES else EXIT_FAILED


def _fail(error: AsaError, *, as_json: bool = False) -> NoReturn:
    problems = problems_of(error)
    if as_json:
        document: dict[str, Any] = {
            "ok": False,
            "code": error.code,
            "problems": [p.to_dict() for p in problems],
        }
        click.echo(json.dumps(document, indent=2, sort_keys=True))
    for problem in problems:
        click.echo(f"error: {problem}", err=True)
    sys.exit(exit_code_for(error))


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
def sign_command(
    bundle: Path, private_key: Path, signature: Path | None, password_env: str | None
) -> None:
    """Sign every file of BUNDLE (OpenSSF model-signing compatible signature)."""
    password: bytes | None = None
    if password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise click.UsageError(f"environment variable {password_env} is not set")
        password = value.encode("utf-8")
    try:
        key = load_private_key(private_key, password=password)
        path = sign_bundle(bundle, key, signature_path=signature)
        digest = root_digest_of_dir(bundle)
    except AsaError as error:
        _fail(error)
    click.echo(f"signed {bundle}: signature {path}, root digest {digest}")


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
    """Verify the signature of BUNDLE against trusted public keys."""
    try:
        result = verify_bundle_signature(bundle, list(public_keys), signature_path=signature)
    except AsaError as error:
        _fail(error, as_json=as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, **result.to_dict()}, indent=2, sort_keys=True))
        return
    click.echo(
        f"OK: {bundle}: signature {result.signature_path} verified "
        f"(key {result.key_hint[:16]}..., {len(result.files)} files, "
        f"root digest {result.root_digest})"
    )
