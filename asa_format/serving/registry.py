"""The bundles a server serves: configuration, loading with every check, model binding.

Configuration, read by every server process when its engine starts:

* ``ASA_VLLM_BUNDLES``: a JSON object mapping a name (1-64 characters:
  letters, digits, ``_ . -``) to a bundle directory or a pinned hub reference
  (``org/name@<40-hex commit>``);
* ``ASA_VLLM_TRUSTED_KEYS`` (optional): a JSON array of public key files;
  then every bundle must carry a signature by one of them.

Every bundle is loaded with :func:`~asa_format.load_bundle` (sizes, hashes,
profiles, signature), compiled (:class:`~asa_format.runtime.program.Program`)
and checked against the served model as
``attach`` checks it (:func:`~asa_format.runtime.compat.check_compatibility`:
hidden size, layer count, model type, model id). Any failure stops the
start-up with the error's code and the bundle's name in the message.

The process that admits requests loads the bundles first and passes the
root digests it loaded to the engine processes it starts
(``ASA_VLLM_PINNED``), which load each bundle again pinned to that digest:
every process serves the same bytes or the server does not start.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from asa_format.errors import AsaError, BundleError, UsageError
from asa_format.format.interventions import NAME_PATTERN

__all__ = [
    "DIGEST_PATTERN",
    "ENV_BUNDLES",
    "ENV_PINNED",
    "ENV_TRUSTED_KEYS",
    "Registry",
    "ServedBundle",
    "ServingConfig",
    "check_model",
    "config_model",
    "load_registry",
    "read_config",
]

logger = logging.getLogger("asa_format.serving")

ENV_BUNDLES = "ASA_VLLM_BUNDLES"
ENV_TRUSTED_KEYS = "ASA_VLLM_TRUSTED_KEYS"
ENV_PINNED = "ASA_VLLM_PINNED"  # set by the admitting process for the engine processes it starts
DIGEST_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")  # used with fullmatch
MAX_BUNDLES = 64


def _config_error(message: str, hint: str) -> UsageError:
    return UsageError(message, code="SERVING_CONFIG", hint=hint)


@dataclass(frozen=True)
class ServingConfig:
    """What the environment configures: name -> source, and the trusted keys (None: unsigned allowed)."""

    bundles: dict[str, str]
    trusted_keys: list[str] | None = None


def _json(environ: Mapping[str, str], key: str) -> Any:
    raw = environ.get(key, "")
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _config_error(
            f"{key} is not valid JSON ({exc})",
            'write a JSON object, e.g. {"tools": "/srv/asa/tools"}'
            if key == ENV_BUNDLES
            else 'write a JSON array of key files, e.g. ["/etc/asa/team.pub"]',
        ) from None


def read_config(environ: Mapping[str, str] | None = None) -> ServingConfig:
    """Parse ``ASA_VLLM_BUNDLES`` and ``ASA_VLLM_TRUSTED_KEYS``; unset means no bundles."""
    env = os.environ if environ is None else environ
    doc = _json(env, ENV_BUNDLES)
    bundles: dict[str, str] = {}
    if doc is not None:
        if not isinstance(doc, dict):
            raise _config_error(
                f"{ENV_BUNDLES} must be a JSON object (name -> bundle), got {type(doc).__name__}",
                'write e.g. {"tools": "/srv/asa/tools", "tone": "org/tone@<40-hex commit>"}',
            )
        if len(doc) > MAX_BUNDLES:
            raise _config_error(
                f"{ENV_BUNDLES} names {len(doc)} bundles; at most {MAX_BUNDLES} are served",
                "serve fewer bundles per server",
            )
        for name, source in doc.items():
            if not NAME_PATTERN.match(name):
                raise _config_error(
                    f"{ENV_BUNDLES}: the name {name!r} is not allowed",
                    "use 1-64 characters: letters, digits, '_', '.', '-' (requests name bundles by it)",
                )
            if not isinstance(source, str) or not source.strip():
                raise _config_error(
                    f"{ENV_BUNDLES}[{name!r}] must be a bundle directory or a hub reference (a string)",
                    "write an absolute directory or org/name@<40-hex commit>",
                )
            bundles[name] = source
    keys_doc = _json(env, ENV_TRUSTED_KEYS)
    keys: list[str] | None = None
    if keys_doc is not None:
        if (
            not isinstance(keys_doc, list)
            or not keys_doc
            or not all(isinstance(k, str) and k.strip() for k in keys_doc)
        ):
            raise _config_error(
                f"{ENV_TRUSTED_KEYS} must be a non-empty JSON array of public key files",
                'write e.g. ["/etc/asa/team.pub"], or unset it to serve unsigned bundles',
            )
        keys = list(keys_doc)
    return ServingConfig(bundles, keys)


@dataclass(frozen=True)
class ServedBundle:
    """One configured bundle, loaded and verified."""

    name: str
    source: str
    bundle: Any  # asa_format.Bundle
    program: Any  # asa_format.runtime.program.Program

    @property
    def digest(self) -> str:
        return str(self.bundle.root_digest)


class Registry:
    """The served bundles, by configured name and by root digest."""

    def __init__(self, served: list[ServedBundle]) -> None:
        self.by_name: dict[str, ServedBundle] = {s.name: s for s in served}
        self.by_digest: dict[str, ServedBundle] = {}
        for s in served:
            self.by_digest.setdefault(s.digest, s)

    def __bool__(self) -> bool:
        return bool(self.by_name)

    def __len__(self) -> int:
        return len(self.by_name)

    def resolve(self, selection: Any) -> ServedBundle:
        """The bundle a request names (a configured name or a root digest); refuse anything else."""
        found = None
        if isinstance(selection, str):
            found = (
                self.by_digest.get(selection)
                if DIGEST_PATTERN.fullmatch(selection)
                else self.by_name.get(selection)
            )
        if found is None:
            shown = repr(selection) if len(repr(selection)) <= 80 else repr(selection)[:77] + "..."
            served = ", ".join(sorted(self.by_name)) or "none"
            raise UsageError(
                f"the request names bundle {shown}, which this server does not serve (served: {served})",
                code="SERVING_BUNDLE_UNKNOWN",
                hint="name a configured bundle or the root digest (sha256:...) of one; omit asa_bundle for no steering",
            )
        return found

    def pins(self) -> dict[str, str]:
        """name -> root digest, for the engine processes."""
        return {name: s.digest for name, s in sorted(self.by_name.items())}

    def programs(self) -> dict[str, Any]:
        """root digest -> compiled bundle (Program)."""
        return {d: s.program for d, s in self.by_digest.items()}


def _named(exc: AsaError, name: str, source: str) -> AsaError:
    """The same error (class, code, file, hint), its message naming the configured bundle."""
    message = f"bundle {name!r} ({source}): {exc.message}"
    if isinstance(exc, BundleError):
        return type(exc)(
            message, code=exc.code, file=exc.file, hint=exc.hint, problems=exc.problems
        )
    return type(exc)(message, code=exc.code, file=exc.file, hint=exc.hint)


def load_registry(
    environ: Mapping[str, str] | None = None, *, pinned: Mapping[str, str] | None = None
) -> Registry:
    """Load every configured bundle with every check (signatures when keys are configured).

    ``pinned`` (name -> root digest) makes each bundle load only with that
    digest; a name missing from it, or from the configuration, is refused.
    """
    from asa_format.bundle import load_bundle
    from asa_format.runtime.program import Program

    config = read_config(environ)
    if pinned is not None and set(pinned) != set(config.bundles):
        raise _config_error(
            f"the engine process was started for bundles {sorted(pinned)} but is configured with "
            f"{sorted(config.bundles)}",
            f"start every process of a server with the same {ENV_BUNDLES}",
        )
    served: list[ServedBundle] = []
    for name, source in config.bundles.items():
        try:
            bundle = load_bundle(
                source,
                expected_digest=None if pinned is None else pinned[name],
                trusted_keys=config.trusted_keys,
            )
            program = Program(bundle)
        except AsaError as exc:
            raise _named(exc, name, source) from exc
        served.append(ServedBundle(name, source, bundle, program))
        logger.info("serving bundle %r (%s) from %s", name, bundle.root_digest, source)
    return Registry(served)


def _view(served: ServedBundle) -> Any:
    """What check_compatibility reads of a bundle: its binding and its highest block."""
    return SimpleNamespace(
        manifest=SimpleNamespace(
            model=served.bundle.manifest.model,
            layer=SimpleNamespace(index=max(served.program.blocks)),
        )
    )


def check_model(registry: Registry, model: Any, layers: Any, dtype: str | None = None) -> None:
    """Refuse a bundle bound to another model (as ``attach`` refuses it), naming the bundle.

    ``dtype`` (the model's, e.g. ``"bfloat16"``): also refuse deltas that are
    not finite in it (``VALUE_OVERFLOW``), as ``attach`` does.
    """
    from asa_format.runtime.compat import check_compatibility

    for name, served in registry.by_name.items():
        try:
            check_compatibility(model, _view(served), layers, strict_model_match=True)
            if dtype is not None:
                served.program.check_finite(dtype)
        except AsaError as exc:
            raise _named(exc, name, served.source) from exc


def config_model(hf_config: Any) -> tuple[Any, Any]:
    """A model stand-in and its block list built from a transformers config alone.

    The admitting process has the served model's config but not its modules;
    :func:`check_model` needs only ``model.config`` and the number of blocks.
    """
    from torch import nn

    from asa_format.runtime.layers import ResolvedLayers, text_layer_count

    count = text_layer_count(hf_config)
    if count is None:
        raise _config_error(
            "the served model's config states no layer count",
            "serve a decoder model whose config has num_hidden_layers",
        )
    layers = ResolvedLayers(
        "model.layers", nn.ModuleList(nn.Identity() for _ in range(count)), "config"
    )
    return SimpleNamespace(config=hf_config), layers
