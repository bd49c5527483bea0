"""The bundle manifest: typed dataclasses, strict parsing and canonical writing.

Parsing goes in this order, each step on the output of the one before:
size cap -> UTF-8 -> strict JSON (no duplicate keys, no NaN/Infinity) ->
format name and major version -> JSON Schema (``manifest.schema.json``) ->
semantic rules that a schema cannot state -> dataclasses.

Forward compatibility is deliberate: a reader of format 1.m given a 1.n
manifest with n > m tolerates members it does not know (they are reported as
warnings and ignored); a manifest of the reader's own minor version or an
older one must not contain unknown members; another major version is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from asa_format import constants as C
from asa_format.errors import BundleError, ErrorCode, Problem
from asa_format.format.interventions import Intervention, intervention_problems
from asa_format.format.jsonio import (
    DuplicateKeyError,
    JsonTextError,
    NonFiniteError,
    dumps_canonical,
    loads_strict,
)
from asa_format.format.schema import check_schema, iter_violations

__all__ = [
    "AsaManifest",
    "DomainEntry",
    "FileEntry",
    "LayerRef",
    "Manifest",
    "ModelBinding",
    "Producer",
    "Provenance",
    "Steering",
    "manifest_schema",
    "parse_manifest",
    "probe_file_name",
]


def probe_file_name(index: int) -> str:
    return C.PROBE_FILE_TEMPLATE.format(index=index)


@dataclass(frozen=True)
class Producer:
    name: str
    version: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Producer:
        return cls(name=d["name"], version=d["version"])


@dataclass(frozen=True)
class ModelBinding:
    """The model the assets were fitted on. ``None`` means "not known"."""

    hidden_size: int
    id: str | None = None
    type: str | None = None
    num_layers: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelBinding:
        return cls(
            hidden_size=int(d["hidden_size"]),
            id=d.get("id"),
            type=d.get("type"),
            num_layers=None if d.get("num_layers") is None else int(d["num_layers"]),
        )


@dataclass(frozen=True)
class LayerRef:
    """0-based index of the decoder block whose *output* is read and steered."""

    index: int
    tensor: str = C.LAYER_TENSOR_BLOCK_OUTPUT

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "tensor": self.tensor}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerRef:
        return cls(index=int(d["index"]), tensor=d["tensor"])


@dataclass(frozen=True)
class Steering:
    alpha: float
    tau: float
    beta: float
    policy: str = C.POLICY_PREFILL_LAST_TOKEN
    no_probe_probability: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": float(self.alpha),
            "tau": float(self.tau),
            "beta": float(self.beta),
            "policy": self.policy,
            "no_probe_probability": float(self.no_probe_probability),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Steering:
        return cls(
            alpha=float(d["alpha"]),
            tau=float(d["tau"]),
            beta=float(d["beta"]),
            policy=d["policy"],
            no_probe_probability=float(d["no_probe_probability"]),
        )


@dataclass(frozen=True)
class DomainEntry:
    name: str
    probe: str | None  # file name of the probe graph, or None: no probe

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "probe": self.probe}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DomainEntry:
        return cls(name=d["name"], probe=d.get("probe"))


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileEntry:
        return cls(size=int(d["size"]), sha256=d["sha256"])


@dataclass(frozen=True)
class Provenance:
    """Where the assets came from. Deterministic: no timestamps, no host names."""

    source: str  # "legacy-pickle", "pipeline" or "other"
    tool: Producer | None = None
    inputs: dict[str, FileEntry] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.tool is not None:
            out["tool"] = self.tool.to_dict()
        if self.inputs:
            out["inputs"] = {k: v.to_dict() for k, v in self.inputs.items()}
        if self.library_versions:
            out["library_versions"] = dict(self.library_versions)
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provenance:
        tool = d.get("tool")
        return cls(
            source=d["source"],
            tool=Producer.from_dict(tool) if tool is not None else None,
            inputs={k: FileEntry.from_dict(v) for k, v in d.get("inputs", {}).items()},
            library_versions=dict(d.get("library_versions", {})),
            metadata=dict(d.get("metadata", {})),
        )


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """Any 1.x manifest. ``layer``, ``steering`` and ``domains`` are the asa
    intervention's members: absent (None, empty) in a bundle without one;
    :class:`AsaManifest` is the type of a manifest that has them."""

    producer: Producer
    model: ModelBinding
    files: dict[str, FileEntry]
    layer: LayerRef | None = None
    steering: Steering | None = None
    domains: tuple[DomainEntry, ...] = ()
    provenance: Provenance | None = None
    requires: tuple[str, ...] = ()  # format 1.1: features a reader must implement
    interventions: tuple[Intervention, ...] = ()  # format 1.1; empty: one implicit asa intervention
    format: str = C.FORMAT_NAME
    format_version: str = C.FORMAT_VERSION_BASE

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    @property
    def has_asa(self) -> bool:
        return self.layer is not None and self.steering is not None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": self.format,
            "format_version": self.format_version,
            "producer": self.producer.to_dict(),
            "model": self.model.to_dict(),
            "files": {k: self.files[k].to_dict() for k in sorted(self.files)},
        }
        if self.layer is not None and self.steering is not None:
            out["layer"] = self.layer.to_dict()
            out["steering"] = self.steering.to_dict()
            out["domains"] = [d.to_dict() for d in self.domains]
        if self.requires:
            out["requires"] = sorted(self.requires)
        if self.interventions:
            out["interventions"] = [iv.to_dict() for iv in self.interventions]
        if self.provenance is not None:
            out["provenance"] = self.provenance.to_dict()
        return out

    def to_bytes(self) -> bytes:
        """Canonical manifest bytes (``indent=2``, sorted keys, UTF-8, final newline)."""
        return dumps_canonical(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        prov = d.get("provenance")
        common: dict[str, Any] = dict(
            format=d["format"],
            format_version=d["format_version"],
            producer=Producer.from_dict(d["producer"]),
            model=ModelBinding.from_dict(d["model"]),
            files={k: FileEntry.from_dict(v) for k, v in d["files"].items()},
            provenance=Provenance.from_dict(prov) if prov is not None else None,
            requires=tuple(d.get("requires", ())),
            interventions=tuple(Intervention.from_dict(x) for x in d.get("interventions", ())),
        )
        if "layer" not in d:
            return Manifest(**common)
        return AsaManifest(
            layer=LayerRef.from_dict(d["layer"]),
            steering=Steering.from_dict(d["steering"]),
            domains=tuple(DomainEntry.from_dict(x) for x in d["domains"]),
            **common,
        )


@dataclass(frozen=True, kw_only=True)
class AsaManifest(Manifest):
    """A manifest with an asa intervention (every 1.0 manifest is one)."""

    layer: LayerRef
    steering: Steering


# --------------------------------------------------------------------------
# parsing


@lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    """The normative JSON Schema (a copy of ``spec/manifest.schema.json``)."""
    text = resources.files("asa_format").joinpath("schema/manifest.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@lru_cache(maxsize=1)
def _checked_schema() -> dict[str, Any]:
    schema = manifest_schema()
    check_schema(schema)
    return schema


def _json_path(path: Any) -> str:
    out = "$"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _schema_problems(
    doc: dict[str, Any], tolerate_unknown: bool
) -> tuple[list[Problem], list[Problem]]:
    errors: list[Problem] = []
    warnings: list[Problem] = []
    violations = sorted(
        iter_violations(doc, _checked_schema(), ignore_unknown=tolerate_unknown),
        key=lambda v: (list(map(str, v.path)), v.message),
    )
    for v in violations:
        where = _json_path(v.path)
        message = v.message if len(v.message) <= 300 else v.message[:300] + "..."
        if tolerate_unknown and v.unknown:  # at any depth, inside oneOf alternatives too
            warnings.append(
                Problem(
                    code="MANIFEST_SCHEMA",
                    file=C.MANIFEST_FILE,
                    message=f"{where}: ignoring members of a newer minor version: {message}",
                )
            )
            continue
        errors.append(
            Problem(
                code="MANIFEST_SCHEMA",
                file=C.MANIFEST_FILE,
                message=f"{where}: {message}",
                hint="see spec/manifest.schema.json for the allowed members and types",
            )
        )
    return errors, warnings


def _semantic_problems(doc: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []

    def bad(message: str, hint: str, code: ErrorCode = "MANIFEST_SEMANTIC") -> None:
        problems.append(Problem(code=code, file=C.MANIFEST_FILE, message=message, hint=hint))

    problems.extend(intervention_problems(doc))
    if "layer" not in doc or "steering" not in doc or "domains" not in doc:
        if (
            "interventions" not in doc
        ):  # an incomplete asa intervention: reported above, nothing more
            return problems
        for name in sorted(set(doc["files"]) - {C.INTERVENTIONS_FILE, C.CARD_FILE}):
            bad(
                f"$.files lists {name!r}, which no part of the manifest uses",
                "a bundle without an asa intervention has no graphs or domain vectors",
            )
        return problems  # no asa intervention (reported above when that is wrong)
    names = [d["name"] for d in doc["domains"]]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            bad(f"domain {name!r} is listed twice in $.domains", "domain names must be unique")
        seen.add(name)
    expected_files = {C.VECTORS_FILE, C.SCALER_FILE, C.ROUTER_FILE}
    expected_files |= {
        n for n in (C.INTERVENTIONS_FILE, C.CARD_FILE) if n in doc["files"]
    }  # checked above
    for i, entry in enumerate(doc["domains"]):
        probe = entry.get("probe")
        if probe is None:
            continue
        if probe != probe_file_name(i):
            bad(
                f"$.domains[{i}].probe is {probe!r}, expected {probe_file_name(i)!r}",
                "the probe of the domain at index i must be named probe_<i>.onnx",
            )
        expected_files.add(probe)
    listed = set(doc["files"])
    for name in sorted(expected_files - listed):
        bad(f"$.files does not list {name!r}", "list every bundle file with its size and sha256")
    for name in sorted(listed - expected_files):
        bad(
            f"$.files lists {name!r}, which no part of the manifest uses",
            "remove the entry, or reference the probe from its domain",
        )
    num_layers = doc["model"].get("num_layers")
    index = doc["layer"]["index"]
    if num_layers is not None and index >= num_layers:
        bad(
            f"$.layer.index is {index} but $.model.num_layers is {num_layers}",
            "the layer index is 0-based and must be below the layer count",
            code="LAYER_OUT_OF_RANGE",
        )
    return problems


def parse_manifest(data: bytes) -> tuple[Manifest | None, list[Problem], list[Problem]]:
    """Parse manifest bytes. Returns ``(manifest or None, errors, warnings)``."""

    def fail(code: ErrorCode, message: str, hint: str) -> tuple[None, list[Problem], list[Problem]]:
        return None, [Problem(code=code, file=C.MANIFEST_FILE, message=message, hint=hint)], []

    if len(data) > C.MAX_MANIFEST_BYTES:
        return fail(
            "MANIFEST_TOO_LARGE",
            f"manifest is {len(data)} bytes, over the cap of {C.MAX_MANIFEST_BYTES}",
            "a valid manifest is a few kilobytes; move free-form metadata elsewhere",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return fail(
            "MANIFEST_ENCODING",
            f"not valid UTF-8 at byte {exc.start}",
            "write the manifest as UTF-8",
        )
    try:
        doc = loads_strict(text)
    except DuplicateKeyError as exc:
        return fail(
            "MANIFEST_DUPLICATE_KEY",
            f"key {exc.key!r} appears twice in one object",
            "remove the duplicate key",
        )
    except NonFiniteError as exc:
        return fail(
            "MANIFEST_NONFINITE", f"the literal {exc.literal} is not JSON", "use finite numbers"
        )
    except JsonTextError as exc:
        return fail(
            "MANIFEST_ENCODING",
            f"{exc}",
            "text in the manifest must be valid Unicode without non-characters",
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, integer digit limit
        return fail("MANIFEST_JSON", f"invalid JSON: {exc}", "fix the JSON syntax")
    if not isinstance(doc, dict):
        return fail(
            "MANIFEST_SCHEMA",
            "$: the manifest must be a JSON object",
            "see spec/manifest.schema.json",
        )
    if doc.get("format") != C.FORMAT_NAME:
        return fail(
            "FORMAT_UNKNOWN",
            f"$.format is {doc.get('format')!r}, expected {C.FORMAT_NAME!r}",
            "this is not an asa bundle manifest",
        )
    version = doc.get("format_version")
    major, minor = _split_version(version)
    if major is None or minor is None:
        return fail(
            "MANIFEST_SCHEMA",
            f"$.format_version is {version!r}, expected 'MAJOR.MINOR'",
            f"this reader writes {C.FORMAT_VERSION!r}",
        )
    if major != C.FORMAT_MAJOR:
        return fail(
            "FORMAT_VERSION_UNSUPPORTED",
            f"format version {version} is not supported (this reader supports {C.FORMAT_MAJOR}.x)",
            "upgrade asa-format, or convert the bundle to a supported major version",
        )
    requires = doc.get("requires")
    if isinstance(requires, list):
        unknown = sorted({str(f) for f in requires if isinstance(f, str)} - set(C.FEATURES))
        if unknown:
            return fail(
                "FORMAT_FEATURE_UNSUPPORTED",
                f"$.requires names {unknown}, which this reader does not implement (it implements {list(C.FEATURES)})",
                "upgrade asa-format to a version that implements these features",
            )
    files = doc.get("files")
    if isinstance(files, dict):
        unsafe = [name for name in files if _unsafe_path(name)]
        if unsafe:
            return fail(
                "PATH_INVALID",
                f"$.files names {unsafe[0]!r}: "
                "bundle paths are plain file names in the bundle directory",
                "no absolute paths, no '..', no directories, no backslashes or drive letters",
            )
    errors, warnings = _schema_problems(doc, tolerate_unknown=minor > C.FORMAT_MINOR)
    if errors:
        return None, errors, warnings
    errors = _semantic_problems(doc)
    if errors:
        return None, errors, warnings
    return Manifest.from_dict(doc), [], warnings


def _unsafe_path(name: str) -> bool:
    return (
        name in ("", ".", "..")
        or name.startswith(("/", "~"))
        or any(ch in name for ch in ("/", "\\", ":", "\x00"))
        or ".." in name
    )


def _split_version(version: Any) -> tuple[int | None, int | None]:
    if not isinstance(version, str):
        return None, None
    parts = version.split(".")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) <= 4 for p in parts):
        return None, None
    return int(parts[0]), int(parts[1])


def parse_manifest_or_raise(data: bytes) -> Manifest:
    manifest, errors, _ = parse_manifest(data)
    if errors or manifest is None:
        raise BundleError.from_problems(errors)
    return manifest
