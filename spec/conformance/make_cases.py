"""Generate the asa-bundle v1 conformance corpus (deterministic).

Usage::

    python spec/conformance/make_cases.py            # rewrite valid/ and invalid/ here
    python spec/conformance/make_cases.py --out DIR  # write the corpus under DIR

Layout (see README.md): ``valid/<case>/bundle/`` and ``invalid/<case>/bundle/``
hold the bundle directories; ``<case>/expected.json`` says what a reader must
report. Running the script twice gives byte-identical files.

Cases that git cannot store (hard links, FIFOs, permissions, a manifest over
the 1 MiB cap) are built at test time by :func:`build_runtime_case`, listed by
:func:`runtime_case_names`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import struct
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from dataclasses import replace as replace_case
from pathlib import Path
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format.format.jsonio import dumps_canonical
from asa_format.storage.writer import bundle_files
from asa_format.testing import make_test_contents
from decision_vectors import (  # next to this script
    CONDITIONS_FILE,
    DECISIONS_FILE,
    condition_vectors,
    decision_vectors,
)

__all__ = [
    "Case",
    "Symlink",
    "build_runtime_case",
    "generate",
    "invalid_cases",
    "runtime_case_names",
    "valid_cases",
    "write_case",
]

HIDDEN = 8
DOMAINS = ("math", "search")
PRODUCER = {"name": "asa-conformance", "version": "1.0"}
STATIC = "static"  # rejected before any onnxruntime session exists
SESSION = "session"  # rejected by the session smoke run

Files = Mapping[str, "bytes | Symlink"]


@dataclass(frozen=True)
class Symlink:
    """A symbolic link with a relative ``target`` (git stores these)."""

    target: str


@dataclass(frozen=True)
class Case:
    """One conformance case.

    ``bundle`` is the content of ``<case>/bundle/``; ``outside`` holds files
    (or links) next to it, in ``<case>/``. ``bundle_link`` makes ``bundle``
    itself a symbolic link to that name in ``<case>/``.
    """

    name: str
    description: str
    bundle: Files
    code: str | None = None  # None: valid
    also: tuple[str, ...] = ()  # other codes a conforming reader may report (section 2.5)
    stage: str = STATIC
    warnings: tuple[str, ...] = ()
    outside: Files = field(default_factory=dict)
    bundle_link: str | None = None

    def expected(self) -> dict[str, Any]:
        if self.code is None:
            return {"description": self.description, "valid": True, "warnings": list(self.warnings)}
        return {
            "code": self.code,
            "codes": sorted({self.code, *self.also}),
            "description": self.description,
            "stage": self.stage,
        }


# --------------------------------------------------------------------------
# building blocks


def base_files(**kwargs: Any) -> dict[str, bytes]:
    """The files of a small valid bundle (hidden size 8, domains math/search)."""
    opts: dict[str, Any] = {"hidden_size": HIDDEN, "domains": DOMAINS, "layer": 1, "seed": 7}
    opts.update(kwargs)
    _, files = bundle_files(make_test_contents(**opts))
    doc = json.loads(files[C.MANIFEST_FILE])
    doc["producer"] = dict(PRODUCER)
    files[C.MANIFEST_FILE] = dumps_canonical(doc)
    return files


def manifest_doc(files: dict[str, bytes]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(files[C.MANIFEST_FILE])
    return doc


def with_manifest(files: dict[str, bytes], doc: dict[str, Any]) -> dict[str, bytes]:
    out = dict(files)
    out[C.MANIFEST_FILE] = dumps_canonical(doc)
    return out


def rehash(files: dict[str, bytes]) -> dict[str, bytes]:
    """Update the manifest's size/sha256 of every listed file that is present."""
    doc = manifest_doc(files)
    for name, entry in doc["files"].items():
        if name in files:
            entry["size"] = len(files[name])
            entry["sha256"] = hashlib.sha256(files[name]).hexdigest()
    return with_manifest(files, doc)


def replace(files: dict[str, bytes], name: str, data: bytes) -> dict[str, bytes]:
    """Replace one file and make the manifest agree with it."""
    out = dict(files)
    out[name] = data
    return rehash(out)


def edit_manifest(
    files: dict[str, bytes], edit: Callable[[dict[str, Any]], object]
) -> dict[str, bytes]:
    doc = manifest_doc(files)
    edit(doc)
    return with_manifest(files, doc)


def manifest_text(files: dict[str, bytes], old: str, new: str) -> dict[str, bytes]:
    """Replace text in the manifest (for edits that JSON cannot express)."""
    text = files[C.MANIFEST_FILE].decode("utf-8")
    if old not in text:
        raise ValueError(f"{old!r} not in the manifest")
    out = dict(files)
    out[C.MANIFEST_FILE] = text.replace(old, new, 1).encode("utf-8")
    return out


def vectors_of(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    data = files[C.VECTORS_FILE]
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    body = data[8 + n :]
    return {
        k: np.frombuffer(body[v["data_offsets"][0] : v["data_offsets"][1]], "<f4").copy()
        for k, v in header.items()
    }


def raw_safetensors(
    header: dict[str, Any] | bytes, body: bytes, *, length: int | None = None
) -> bytes:
    """Safetensors bytes from an explicit header (dict or raw JSON bytes)."""
    text = (
        header
        if isinstance(header, bytes)
        else json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    )
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text) if length is None else length) + text + body


def tiled(
    vectors: dict[str, np.ndarray], *, dtype: str = "F32", metadata: Any = None
) -> tuple[dict[str, Any], bytes]:
    """Header and body laying out ``vectors`` contiguously in sorted order."""
    np_dtype = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}[dtype]
    header: dict[str, Any] = {
        "__metadata__": {"format": C.FORMAT_NAME} if metadata is None else metadata
    }
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(vectors):
        blob = np.asarray(vectors[name], dtype=np_dtype).tobytes()
        header[name] = {
            "data_offsets": [offset, offset + len(blob)],
            "dtype": dtype,
            "shape": [len(vectors[name])],
        }
        offset += len(blob)
        blobs.append(blob)
    return header, b"".join(blobs)


def onnx_edit(files: dict[str, bytes], name: str, edit: Callable[[Any], None]) -> dict[str, bytes]:
    """Parse graph ``name``, apply ``edit`` to the ModelProto, re-serialize, rehash."""
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(files[name])
    edit(model)
    return replace(files, name, model.SerializeToString(deterministic=True))


def _unit(seed: int, h: int = HIDDEN) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(h)
    return (v / np.linalg.norm(v)).astype(np.float32)


# --------------------------------------------------------------------------
# valid cases


def valid_cases() -> list[Case]:
    newer = base_files()
    doc = manifest_doc(newer)
    doc["format_version"] = "1.7"
    doc["x_future_member"] = {"anything": [1, 2, 3]}
    doc["steering"]["x_future_knob"] = True
    newer = with_manifest(newer, doc)
    return [
        Case("minimal_two_domains", "two domains, both with probes, default policy", base_files()),
        Case(
            "domain_without_probe",
            "three domains, the middle one without a probe",
            base_files(domains=("math", "search", "code"), missing_probes=("search",)),
        ),
        Case(
            "no_probes",
            "no domain has a probe; p is no_probe_probability",
            base_files(missing_probes=DOMAINS, no_probe_probability=0.25),
        ),
        Case("policy_all_tokens", "policy all_tokens", base_files(policy=C.POLICY_ALL_TOKENS)),
        Case(
            "policy_generated_tokens",
            "policy generated_tokens",
            base_files(policy=C.POLICY_GENERATED_TOKENS),
        ),
        Case(
            "policy_prefill_last_token",
            "policy prefill_last_token, tau 1 and beta 0",
            base_files(policy=C.POLICY_PREFILL_LAST_TOKEN, tau=1.0, beta=0.0),
        ),
        Case(
            "model_unknown",
            "model id and type unknown (null)",
            base_files(model_type=None, model_id=None),
        ),
        Case(
            "model_bound",
            "model id, type and num_layers set; layer is the last block",
            base_files(model_id="org/tiny-model", model_type="qwen2", num_layers=4, layer=3),
        ),
        Case(
            "unicode_domain_names",
            "non-ASCII domain names",
            base_files(domains=("数学", "búsqueda", "код 🔧")),
        ),
        Case(
            "hidden_size_16",
            "hidden size 16, layer 0, negative alpha",
            base_files(hidden_size=16, layer=0, alpha=-2.5),
        ),
        *interventions_cases()[0],  # format 1.1
        *forward_compat_cases()[0],  # spec 9.2: unknown members of a newer minor version, by level
        Case(
            "newer_minor_version",
            "format 1.7 with members unknown to a 1.0 reader: valid, with warnings",
            newer,
            warnings=("MANIFEST_SCHEMA", "MANIFEST_SCHEMA"),
        ),
    ]


# --------------------------------------------------------------------------
# invalid cases: manifest


def _manifest_cases() -> list[Case]:
    b = base_files()
    m = manifest_doc(b)
    vec_entry = m["files"][C.VECTORS_FILE]

    def e(fn: Callable[[dict[str, Any]], object]) -> dict[str, bytes]:
        return edit_manifest(b, fn)

    def set_path(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
        def fn(doc: dict[str, Any]) -> None:
            *parents, last = path.split(".")
            target = doc
            for p in parents:
                target = target[p]
            target[last] = value

        return fn

    def rename_file(new: str) -> Callable[[dict[str, Any]], None]:
        def fn(doc: dict[str, Any]) -> None:
            doc["files"][new] = doc["files"].pop(C.VECTORS_FILE)

        return fn

    def dup_domain(doc: dict[str, Any]) -> None:
        doc["domains"][1]["name"] = doc["domains"][0]["name"]

    def swap_probes(doc: dict[str, Any]) -> None:
        doc["domains"][0]["probe"], doc["domains"][1]["probe"] = (
            doc["domains"][1]["probe"],
            doc["domains"][0]["probe"],
        )

    no_manifest = {k: v for k, v in b.items() if k != C.MANIFEST_FILE}
    return [
        Case(
            "manifest_missing",
            "the bundle has no manifest.json",
            dict(no_manifest),
            "MANIFEST_MISSING",
        ),
        Case(
            "manifest_duplicate_key",
            "the top-level object repeats the key 'format'",
            manifest_text(b, "{\n", '{\n  "format": "asa-bundle",\n'),
            "MANIFEST_DUPLICATE_KEY",
        ),
        Case(
            "manifest_nan",
            "steering.alpha is the literal NaN",
            manifest_text(b, '"alpha": 4.0', '"alpha": NaN'),
            "MANIFEST_NONFINITE",
        ),
        Case(
            "manifest_infinity",
            "steering.alpha is the literal Infinity",
            manifest_text(b, '"alpha": 4.0', '"alpha": Infinity'),
            "MANIFEST_NONFINITE",
        ),
        Case(
            "manifest_overflow_float",
            "steering.alpha is 1e400, which overflows to infinity",
            manifest_text(b, '"alpha": 4.0', '"alpha": 1e400'),
            "MANIFEST_NONFINITE",
        ),
        Case(
            "manifest_huge_integer",
            "model.hidden_size has 5000 digits",
            manifest_text(b, f'"hidden_size": {HIDDEN}', '"hidden_size": ' + "9" * 5000),
            "MANIFEST_JSON",
        ),
        Case(
            "manifest_syntax_error",
            "the manifest is cut in the middle",
            {**b, C.MANIFEST_FILE: b[C.MANIFEST_FILE][:100]},
            "MANIFEST_JSON",
        ),
        Case(
            "manifest_invalid_utf8",
            "a byte 0xff inside a string",
            {
                **b,
                C.MANIFEST_FILE: b[C.MANIFEST_FILE].replace(
                    b"asa-conformance", b"asa-conformance\xff", 1
                ),
            },
            "MANIFEST_ENCODING",
        ),
        Case(
            "manifest_not_object",
            "the manifest is a JSON array",
            {**b, C.MANIFEST_FILE: b"[1, 2, 3]\n"},
            "MANIFEST_SCHEMA",
        ),
        Case(
            "manifest_unknown_key",
            "a format 1.0 manifest with an unknown top-level member",
            e(set_path("extra", 1)),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "manifest_unknown_nested_key",
            "a format 1.0 manifest with an unknown member in steering",
            e(set_path("steering.gamma", 0.1)),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "manifest_wrong_type_hidden_size",
            "model.hidden_size is a string",
            e(set_path("model.hidden_size", str(HIDDEN))),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "manifest_wrong_type_bool_layer",
            "layer.index is a boolean",
            e(set_path("layer.index", True)),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "manifest_missing_member",
            "the steering object is missing",
            e(lambda d: d.pop("steering")),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "manifest_unknown_policy",
            "steering.policy is not one of the three policies",
            e(set_path("steering.policy", "every_other_token")),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "manifest_tau_out_of_range",
            "steering.tau is 0.4 (must be in [0.5, 1])",
            e(set_path("steering.tau", 0.4)),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "manifest_beta_out_of_range",
            "steering.beta is 1.5 (must be in [0, 1])",
            e(set_path("steering.beta", 1.5)),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "manifest_one_domain",
            "a single domain (at least two are required)",
            e(lambda d: d.__setitem__("domains", d["domains"][:1])),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "manifest_domain_named_global",
            "a domain named 'global', the reserved vector name",
            e(lambda d: d["domains"][1].__setitem__("name", "global")),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "manifest_bad_sha256",
            "a sha256 in upper case",
            e(
                lambda d: d["files"][C.VECTORS_FILE].__setitem__(
                    "sha256", vec_entry["sha256"].upper()
                )
            ),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "format_unknown",
            "format is 'asa-bundlex'",
            e(set_path("format", "asa-bundlex")),
            "FORMAT_UNKNOWN",
        ),
        Case(
            "format_version_major_2",
            "format_version 2.0",
            e(set_path("format_version", "2.0")),
            "FORMAT_VERSION_UNSUPPORTED",
        ),
        Case(
            "format_version_malformed",
            "format_version '1.0.0'",
            e(set_path("format_version", "1.0.0")),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "format_version_unicode_digit",
            "format_version uses a superscript digit",
            e(set_path("format_version", "1.\u00b2")),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "path_dotdot",
            "a files entry '../vectors.safetensors'",
            e(rename_file("../vectors.safetensors")),
            "PATH_INVALID",
        ),
        Case(
            "path_absolute",
            "a files entry '/etc/passwd'",
            e(rename_file("/etc/passwd")),
            "PATH_INVALID",
        ),
        Case(
            "path_subdirectory",
            "a files entry 'sub/vectors.safetensors'",
            e(rename_file("sub/vectors.safetensors")),
            "PATH_INVALID",
        ),
        Case(
            "path_backslash",
            "a files entry with a backslash, '..\\vectors.safetensors'",
            e(rename_file("..\\vectors.safetensors")),
            "PATH_INVALID",
        ),
        Case(
            "duplicate_domain",
            "the domain 'math' is listed twice",
            e(dup_domain),
            "MANIFEST_SEMANTIC",
        ),
        Case(
            "probe_name_wrong_index",
            "probe_0.onnx and probe_1.onnx are swapped between the domains",
            e(swap_probes),
            "MANIFEST_SEMANTIC",
        ),
        Case(
            "probe_file_not_listed",
            "a domain's probe is not listed in files",
            e(lambda d: d["files"].pop("probe_1.onnx")),
            "MANIFEST_SEMANTIC",
        ),
        Case(
            "listed_file_unused",
            "files lists probe_1.onnx but its domain has no probe",
            e(lambda d: d["domains"][1].__setitem__("probe", None)),
            "MANIFEST_SEMANTIC",
        ),
        Case(
            "layer_out_of_range",
            "layer.index 4 with model.num_layers 4",
            e(
                lambda d: (
                    d["model"].__setitem__("num_layers", 4),
                    d["layer"].__setitem__("index", 4),
                )
            ),
            "LAYER_OUT_OF_RANGE",
        ),
    ]


def _file_cases() -> list[Case]:
    b = base_files()
    flipped = bytearray(b[C.ROUTER_FILE])
    flipped[len(flipped) // 2] ^= 0x01
    doc = manifest_doc(b)
    doc["files"][C.SCALER_FILE]["size"] += 1
    missing = {k: v for k, v in b.items() if k != "probe_1.onnx"}
    return [
        Case(
            "file_hash_mismatch",
            "one bit of router.onnx flipped after the manifest was written",
            {**b, C.ROUTER_FILE: bytes(flipped)},
            "FILE_HASH_MISMATCH",
        ),
        Case(
            "file_size_mismatch",
            "the manifest's size of scaler.onnx is one byte too large",
            with_manifest(b, doc),
            "FILE_SIZE_MISMATCH",
        ),
        Case(
            "file_truncated",
            "vectors.safetensors lost its last byte",
            {**b, C.VECTORS_FILE: b[C.VECTORS_FILE][:-1]},
            "FILE_SIZE_MISMATCH",
        ),
        Case("file_missing", "probe_1.onnx is listed but absent", missing, "FILE_MISSING"),
        Case(
            "file_unlisted",
            "an extra file README.txt",
            {**b, "README.txt": b"hello\n"},
            "FILE_UNLISTED",
        ),
        Case(
            "file_unlisted_probe",
            "an extra probe_7.onnx that the manifest does not list",
            {**b, "probe_7.onnx": b[C.ROUTER_FILE]},
            "FILE_UNLISTED",
        ),
        Case(
            "signature_file_only_unlisted_allowed",
            "model.sig is allowed unlisted, but the manifest is still checked",
            {**b, C.SIGNATURE_FILE: b"{}", "notes.md": b"x"},
            "FILE_UNLISTED",
        ),
    ]


def _link_cases() -> list[Case]:
    b = base_files()
    vec = b[C.VECTORS_FILE]
    without_vec = {k: v for k, v in b.items() if k != C.VECTORS_FILE}
    without_manifest = {k: v for k, v in b.items() if k != C.MANIFEST_FILE}
    return [
        Case(
            "symlink_file",
            "vectors.safetensors is a symbolic link to a file outside the bundle (same bytes)",
            {**without_vec, C.VECTORS_FILE: Symlink("../outside.safetensors")},
            "PATH_SYMLINK",
            outside={"outside.safetensors": vec},
        ),
        Case(
            "symlink_manifest",
            "manifest.json is a symbolic link",
            {**without_manifest, C.MANIFEST_FILE: Symlink("../outside.json")},
            "PATH_SYMLINK",
            outside={"outside.json": b[C.MANIFEST_FILE]},
        ),
        Case(
            "symlink_subdirectory",
            "the bundle holds a symbolic link to a directory outside it",
            {**b, "sub": Symlink("../outside_dir")},
            "PATH_SYMLINK",
            outside={"outside_dir/secret.txt": b"secret\n"},
        ),
        Case(
            "symlink_dangling",
            "probe_0.onnx is a dangling symbolic link",
            {
                **{k: v for k, v in b.items() if k != "probe_0.onnx"},
                "probe_0.onnx": Symlink("../../../../nonexistent/probe.onnx"),
            },
            "PATH_SYMLINK",
        ),
        Case(
            "symlink_bundle_directory",
            "the bundle directory itself is a symbolic link to a valid bundle",
            {},
            "PATH_SYMLINK",
            outside={f"real/{k}": v for k, v in b.items()},
            bundle_link="real",
        ),
        Case(
            "subdirectory_entry",
            "the bundle holds a subdirectory",
            {**b, "extra/file.txt": b"x"},
            "PATH_NOT_REGULAR",
        ),
    ]


# --------------------------------------------------------------------------
# invalid cases: vectors.safetensors


def _vector_cases() -> list[Case]:
    b = base_files()
    vecs = vectors_of(b)
    names = sorted(vecs)
    header, body = tiled(vecs)
    nbytes = 4 * HIDDEN

    def st(h: dict[str, Any] | bytes, data: bytes = body, **kw: Any) -> dict[str, bytes]:
        return replace(b, C.VECTORS_FILE, raw_safetensors(h, data, **kw))

    def with_entry(name: str, **changes: Any) -> dict[str, Any]:
        h = json.loads(json.dumps(header))
        h[name].update(changes)
        return h

    overlap = with_entry(names[1], data_offsets=[0, nbytes])
    gap_header: dict[str, Any] = {"__metadata__": header["__metadata__"]}
    for i, name in enumerate(names):
        gap_header[name] = {
            "data_offsets": [i * (nbytes + 4), i * (nbytes + 4) + nbytes],
            "dtype": "F32",
            "shape": [HIDDEN],
        }
    gap_body = b"".join(vecs[n].tobytes() + b"\0\0\0\0" for n in names)[:-4]
    unknown_key = with_entry(names[0], layout="row-major")
    dup_text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    first = json.dumps({names[0]: header[names[0]]}, separators=(",", ":"))[1:-1].encode()
    dup_text = dup_text[:-1] + b"," + first + b"}"
    f16_h, f16_b = tiled(vecs, dtype="F16")
    f64_h, f64_b = tiled(vecs, dtype="F64")
    nan_v = dict(vecs)
    nan_v["math"] = vecs["math"].copy()
    nan_v["math"][3] = np.nan
    inf_v = dict(vecs)
    inf_v["search"] = vecs["search"].copy()
    inf_v["search"][0] = np.inf
    shape2 = with_entry(names[0], shape=[2, HIDDEN // 2])
    missing_v = {k: v for k, v in vecs.items() if k != "search"}
    extra_v = {**vecs, "extra": _unit(99)}
    long_v = {k: np.concatenate([v, np.zeros(1, np.float32)]) for k, v in vecs.items()}
    nonunit_v = {**vecs, "global": vecs["global"] * np.float32(1.5)}
    return [
        Case(
            "safetensors_too_short",
            "vectors.safetensors is 4 bytes",
            replace(b, C.VECTORS_FILE, b"\0\0\0\0"),
            "SAFETENSORS_HEADER",
        ),
        Case(
            "safetensors_header_past_end",
            "the header length runs past the end of the file",
            st(header, length=4096),
            "SAFETENSORS_HEADER",
        ),
        Case(
            "safetensors_header_over_cap",
            "the header length is 2 MiB, over the 1 MiB cap",
            st(header, length=2 << 20),
            "SAFETENSORS_HEADER_TOO_LARGE",
        ),
        Case(
            "safetensors_header_not_json",
            "the header is not JSON",
            st(b"{not json}"),
            "SAFETENSORS_HEADER",
        ),
        Case(
            "safetensors_header_not_object",
            "the header is a JSON array",
            st(b"[]", b""),
            "SAFETENSORS_HEADER",
        ),
        Case(
            "safetensors_header_nan",
            "a NaN literal in the header",
            st(b'{"x":NaN}', b""),
            "SAFETENSORS_HEADER",
        ),
        Case(
            "safetensors_overlap",
            "two tensors share the same bytes",
            st(overlap),
            "SAFETENSORS_OFFSETS",
        ),
        Case(
            "safetensors_gap",
            "4 unused bytes between consecutive tensors",
            st(gap_header, gap_body),
            "SAFETENSORS_OFFSETS",
        ),
        Case(
            "safetensors_trailing_bytes",
            "8 bytes after the last tensor",
            st(header, body + b"\0" * 8),
            "SAFETENSORS_OFFSETS",
        ),
        Case(
            "safetensors_offsets_past_end",
            "the last tensor ends past the end of the file",
            st(header, body[:-nbytes]),
            "SAFETENSORS_OFFSETS",
        ),
        Case(
            "safetensors_duplicate_name",
            "a tensor name appears twice in the header",
            st(dup_text),
            "SAFETENSORS_KEYS",
        ),
        Case(
            "safetensors_unknown_entry_key",
            "a tensor entry has an extra key 'layout'",
            st(unknown_key),
            "SAFETENSORS_KEYS",
        ),
        Case(
            "safetensors_dtype_f16", "vectors stored as F16", st(f16_h, f16_b), "SAFETENSORS_DTYPE"
        ),
        Case(
            "safetensors_dtype_f64", "vectors stored as F64", st(f64_h, f64_b), "SAFETENSORS_DTYPE"
        ),
        Case(
            "safetensors_nan",
            "a NaN in the 'math' vector",
            st(*tiled(nan_v)),
            "SAFETENSORS_NONFINITE",
        ),
        Case(
            "safetensors_inf",
            "an Infinity in the 'search' vector",
            st(*tiled(inf_v)),
            "SAFETENSORS_NONFINITE",
        ),
        Case(
            "safetensors_shape_rank2",
            "a vector with shape [2, H/2]",
            st(shape2),
            "SAFETENSORS_SHAPE",
        ),
        Case(
            "safetensors_shape_hidden_mismatch",
            "vectors of length H+1",
            st(*tiled(long_v)),
            "SAFETENSORS_SHAPE",
        ),
        Case(
            "safetensors_missing_domain_vector",
            "no vector for the domain 'search'",
            st(*tiled(missing_v)),
            "SAFETENSORS_KEYS",
        ),
        Case(
            "safetensors_extra_tensor",
            "an extra tensor 'extra'",
            st(*tiled(extra_v)),
            "SAFETENSORS_KEYS",
        ),
        Case(
            "safetensors_bad_metadata",
            "__metadata__ carries another key",
            st(*tiled(vecs, metadata={"format": C.FORMAT_NAME, "note": "x"})),
            "SAFETENSORS_METADATA",
        ),
        Case(
            "safetensors_metadata_not_object",
            "__metadata__ is a string",
            st(*tiled(vecs, metadata="asa-bundle")),
            "SAFETENSORS_METADATA",
        ),
        Case(
            "vector_not_unit",
            "the global vector has norm 1.5",
            st(*tiled(nonunit_v)),
            "VECTOR_NOT_UNIT",
        ),
    ]


# --------------------------------------------------------------------------
# invalid cases: ONNX graphs


def _onnx_cases() -> list[Case]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from asa_format.testing import linear_router_graph, scaler_graph

    b = base_files()

    def edit(name: str, fn: Callable[[Any], None]) -> dict[str, bytes]:
        return onnx_edit(b, name, fn)

    def add_node(
        node: Any, *, domain: str | None = None, version: int = 1
    ) -> Callable[[Any], None]:
        def fn(m: Any) -> None:
            m.graph.node.append(node)
            if domain is not None:
                m.opset_import.append(helper.make_opsetid(domain, version))

        return fn

    def rename_scores(m: Any) -> None:
        for node in m.graph.node:
            node.output[:] = [
                "probs_t" if o == C.CLASSIFIER_PROBABILITIES else o for o in node.output
            ]

    def zipmap(m: Any) -> None:
        rename_scores(m)
        m.graph.node.append(
            helper.make_node(
                "ZipMap",
                ["probs_t"],
                [C.CLASSIFIER_PROBABILITIES],
                domain="ai.onnx.ml",
                classlabels_int64s=[0, 1],
            )
        )
        m.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))

    def seq_output(m: Any) -> None:
        out = m.graph.output[1]
        out.type.CopyFrom(
            helper.make_sequence_type_proto(
                helper.make_map_type_proto(
                    TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.DOUBLE, [])
                )
            )
        )

    def external(location: str) -> Callable[[Any], None]:
        def fn(m: Any) -> None:
            t = next(t for t in m.graph.initializer if t.name == "W")
            size = len(t.raw_data) or 8 * len(t.double_data)
            t.ClearField("raw_data")
            t.ClearField("double_data")
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", location), ("offset", "0"), ("length", str(size))):
                entry = t.external_data.add()
                entry.key, entry.value = k, v

        return fn

    def function(m: Any) -> None:
        fn = helper.make_function(
            "local.fn",
            "Affine",
            ["a", "b"],
            ["y"],
            [helper.make_node("Add", ["a", "b"], ["y"])],
            [helper.make_opsetid("", 13)],
        )
        m.functions.append(fn)
        for node in m.graph.node:
            if node.op_type == "Add":
                node.op_type, node.domain = "Affine", "local.fn"
        m.opset_import.append(helper.make_opsetid("local.fn", 1))

    def sparse(m: Any) -> None:
        values = numpy_helper.from_array(np.array([1.0], dtype=np.float64), "sp")
        indices = numpy_helper.from_array(np.array([0], dtype=np.int64), "sp_idx")
        m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [HIDDEN]))

    def if_node(m: Any) -> None:
        branch = helper.make_graph(
            [helper.make_node("Identity", ["scores"], ["branch_out"])],
            "branch",
            [],
            [helper.make_tensor_value_info("branch_out", TensorProto.DOUBLE, None)],
        )
        m.graph.node.append(
            helper.make_node(
                "Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "c")
            )
        )
        m.graph.node.append(
            helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch)
        )

    def graph_attr_on_identity(m: Any) -> None:
        branch = helper.make_graph([], "payload", [], [])
        node = next(n for n in m.graph.node if n.op_type == "Add")
        node.attribute.append(helper.make_attribute("payload", branch))

    def metadata(key: str) -> Callable[[Any], None]:
        def fn(m: Any) -> None:
            helper.set_model_props(m, {key: '{"session_options": {"intra_op_num_threads": 64}}'})

        return fn

    def set_ir(v: int) -> Callable[[Any], None]:
        def fn(m: Any) -> None:
            m.ir_version = v

        return fn

    def set_opset(*imports: tuple[str, int]) -> Callable[[Any], None]:
        def fn(m: Any) -> None:
            del m.opset_import[:]
            m.opset_import.extend(helper.make_opsetid(d, v) for d, v in imports)

        return fn

    def rename_input(m: Any) -> None:
        m.graph.input[0].name = "input"
        for node in m.graph.node:
            node.input[:] = ["input" if i == C.SCALER_INPUT else i for i in node.input]

    def rename_outputs(m: Any) -> None:
        mapping = {
            C.CLASSIFIER_LABEL: "output_label",
            C.CLASSIFIER_PROBABILITIES: "output_probability",
        }
        for vi in m.graph.output:
            vi.name = mapping[vi.name]
        for node in m.graph.node:
            node.output[:] = [mapping.get(o, o) for o in node.output]
            node.input[:] = [mapping.get(i, i) for i in node.input]

    def input_float(m: Any) -> None:
        m.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT

    def declared_dim(value: int, *, output: bool = False) -> Callable[[Any], None]:
        def fn(m: Any) -> None:
            vi = m.graph.output[-1] if output else m.graph.input[0]
            vi.type.tensor_type.shape.dim[1].dim_value = value

        return fn

    def fixed_batch(m: Any) -> None:
        m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4

    def many_nodes(m: Any) -> None:
        nodes = list(m.graph.node)
        del m.graph.node[:]
        prev = C.SCALER_INPUT
        for i in range(C.MAX_ONNX_NODES):
            m.graph.node.append(helper.make_node("Identity", [prev], [f"id{i}"]))
            prev = f"id{i}"
        for node in nodes:
            node.input[:] = [prev if i == C.SCALER_INPUT else i for i in node.input]
            m.graph.node.append(node)

    def training(m: Any) -> None:
        m.training_info.add()

    rng = np.random.default_rng(3)
    wide_scaler = scaler_graph(np.zeros(HIDDEN + 1, np.float32), np.ones(HIDDEN + 1, np.float32))
    wide_scaler_model = onnx.load_from_string(wide_scaler)
    for vi in (*wide_scaler_model.graph.input, *wide_scaler_model.graph.output):
        vi.type.tensor_type.shape.dim[1].dim_value = HIDDEN
    wide_router = onnx.load_from_string(
        linear_router_graph(rng.standard_normal((HIDDEN, 3)), np.zeros(3))
    )
    wide_router.graph.output[1].type.tensor_type.shape.dim[1].dim_value = 2
    three_router = linear_router_graph(rng.standard_normal((HIDDEN, 3)), np.zeros(3))
    return [
        Case(
            "onnx_unparseable",
            "router.onnx holds bytes that are not a protobuf",
            replace(b, C.ROUTER_FILE, b"\xff" * 64),
            "ONNX_PARSE",
        ),
        Case(
            "onnx_no_graph",
            "router.onnx is an empty ModelProto",
            replace(b, C.ROUTER_FILE, b""),
            "ONNX_PARSE",
        ),
        Case(
            "onnx_checker_fails",
            "a node reads a value that no node produces",
            edit(C.SCALER_FILE, lambda m: m.graph.node[1].input.__setitem__(0, "nowhere")),
            "ONNX_PARSE",
        ),
        Case(
            "onnx_custom_domain_op",
            "an operator of the custom domain 'com.example'",
            edit(
                C.ROUTER_FILE,
                add_node(helper.make_node("Evil", ["scores"], ["e"], domain="com.example")),
            ),
            "ONNX_OP",
        ),
        Case(
            "onnx_custom_domain_import",
            "the custom domain 'com.example' is imported",
            edit(
                C.ROUTER_FILE,
                add_node(
                    helper.make_node("Evil", ["scores"], ["e"], domain="com.example"),
                    domain="com.example",
                ),
            ),
            "ONNX_OPSET",
        ),
        Case(
            "onnx_contrib_op",
            "a com.microsoft contrib operator (FusedMatMul)",
            edit(
                C.ROUTER_FILE,
                add_node(
                    helper.make_node("FusedMatMul", ["x", "W"], ["fm"], domain="com.microsoft")
                ),
            ),
            "ONNX_OP",
        ),
        Case(
            "onnx_op_not_allowlisted",
            "a default-domain operator outside the allowlist (RandomNormalLike)",
            edit(C.ROUTER_FILE, add_node(helper.make_node("RandomNormalLike", ["scores"], ["r"]))),
            "ONNX_OP",
        ),
        Case(
            "onnx_external_data_traversal",
            "an initializer with external data at '../../etc/passwd'",
            edit(C.ROUTER_FILE, external("../../etc/passwd")),
            "ONNX_EXTERNAL_DATA",
        ),
        Case(
            "onnx_external_data_sibling",
            "an initializer with external data in 'weights.bin'",
            edit(C.ROUTER_FILE, external("weights.bin")),
            "ONNX_EXTERNAL_DATA",
        ),
        Case(
            "onnx_local_function",
            "a model-local function used by a node",
            edit(C.ROUTER_FILE, function),
            "ONNX_FUNCTION",
        ),
        Case(
            "onnx_sparse_initializer",
            "a sparse initializer",
            edit(C.ROUTER_FILE, sparse),
            "ONNX_SPARSE",
        ),
        Case(
            "onnx_training_info",
            "the model carries training info",
            edit(C.ROUTER_FILE, training),
            "ONNX_TRAINING",
        ),
        Case(
            "onnx_zipmap",
            "a ZipMap node (sequence of maps output)",
            edit(C.ROUTER_FILE, zipmap),
            "ONNX_OP",
        ),
        Case(
            "onnx_sequence_output",
            "the probabilities output is declared a sequence of maps",
            edit(C.ROUTER_FILE, seq_output),
            "ONNX_IO",
        ),
        Case(
            "onnx_duplicate_opset",
            "the default domain is imported twice",
            edit(C.ROUTER_FILE, set_opset(("", 13), ("", 13))),
            "ONNX_OPSET",
        ),
        Case(
            "onnx_opset_too_new",
            "default-domain opset 99",
            edit(C.ROUTER_FILE, set_opset(("", 99))),
            "ONNX_OPSET",
        ),
        Case(
            "onnx_opset_too_old",
            "default-domain opset 7",
            edit(C.ROUTER_FILE, set_opset(("", 7))),
            "ONNX_OPSET",
        ),
        Case(
            "onnx_no_default_opset",
            "no opset import at all",
            edit(C.ROUTER_FILE, set_opset()),
            "ONNX_OPSET",
        ),
        Case(
            "onnx_ir_version_too_old",
            "IR version 3",
            edit(C.ROUTER_FILE, set_ir(3)),
            "ONNX_IR_VERSION",
        ),
        Case(
            "onnx_ir_version_too_new",
            "IR version 99",
            edit(C.ROUTER_FILE, set_ir(99)),
            "ONNX_IR_VERSION",
        ),
        Case(
            "onnx_if_subgraph",
            "an If node with then/else subgraphs",
            edit(C.ROUTER_FILE, if_node),
            "ONNX_SUBGRAPH",
        ),
        Case(
            "onnx_graph_attribute",
            "a graph-valued attribute on an allowlisted node",
            edit(C.ROUTER_FILE, graph_attr_on_identity),
            "ONNX_SUBGRAPH",
        ),
        Case(
            "onnx_ort_config",
            "metadata key ort_config",
            edit(C.SCALER_FILE, metadata("ort_config")),
            "ONNX_METADATA",
        ),
        Case(
            "onnx_ort_prefixed_metadata",
            "metadata key onnxruntime.session_options",
            edit(C.SCALER_FILE, metadata("onnxruntime.session_options")),
            "ONNX_METADATA",
        ),
        Case(
            "onnx_wrong_input_name",
            "the scaler input is named 'input'",
            edit(C.SCALER_FILE, rename_input),
            "ONNX_IO",
        ),
        Case(
            "onnx_wrong_output_names",
            "router outputs named output_label/output_probability",
            edit(C.ROUTER_FILE, rename_outputs),
            "ONNX_IO",
        ),
        Case(
            "onnx_wrong_input_dtype",
            "the router input is float32 instead of float64",
            edit(C.ROUTER_FILE, input_float),
            "ONNX_IO",
        ),
        Case(
            "onnx_fixed_batch",
            "the router input has a fixed batch dimension",
            edit(C.ROUTER_FILE, fixed_batch),
            "ONNX_IO",
        ),
        Case(
            "onnx_wrong_hidden_dim",
            "the scaler declares input [N, H+1]",
            edit(C.SCALER_FILE, declared_dim(HIDDEN + 1)),
            "HIDDEN_SIZE_MISMATCH",
        ),
        Case(
            "onnx_probe_three_classes",
            "a probe declares probabilities [N, 3]",
            edit("probe_0.onnx", declared_dim(3, output=True)),
            "DOMAIN_MISMATCH",
        ),
        Case(
            "onnx_too_many_nodes",
            f"the scaler has {C.MAX_ONNX_NODES + 2} nodes",
            edit(C.SCALER_FILE, many_nodes),
            "ONNX_TOO_LARGE",
        ),
        Case(
            "router_wrong_domain_count",
            "the router has 3 classes for 2 domains",
            replace(b, C.ROUTER_FILE, three_router),
            "DOMAIN_MISMATCH",
        ),
        Case(
            "session_scaler_weights_wrong_size",
            "the scaler declares [N, H] but its initializers have H+1 values",
            replace(b, C.SCALER_FILE, wide_scaler_model.SerializeToString(deterministic=True)),
            "ONNX_SHAPE",  # found by the static shape walk (section 6.7)
        ),
        Case(
            "session_router_weights_wrong_classes",
            "the router declares [N, 2] probabilities but its weights give 3 columns",
            replace(b, C.ROUTER_FILE, wide_router.SerializeToString(deterministic=True)),
            "DOMAIN_MISMATCH",
        ),
    ]


# Cases with more than one problem: section 2.5 lets a reader check in another
# order, so each of these codes may come first (and a reader that collects every
# problem reports all of them).
ALSO_REPORTED: dict[str, tuple[str, ...]] = {
    "onnx_custom_domain_import": ("ONNX_OP",),
    "onnx_if_subgraph": ("ONNX_OP",),
    "onnx_local_function": ("ONNX_OPSET", "ONNX_OP"),
    "safetensors_dtype_f16": ("SAFETENSORS_OFFSETS",),
    "safetensors_dtype_f64": ("SAFETENSORS_OFFSETS",),
    "safetensors_shape_hidden_mismatch": ("SAFETENSORS_OFFSETS",),
    "safetensors_shape_rank2": ("SAFETENSORS_OFFSETS",),
    "safetensors_unknown_entry_key": ("SAFETENSORS_OFFSETS",),
    "iv_wrong_length": ("SAFETENSORS_OFFSETS",),
}


def invalid_cases() -> list[Case]:
    cases = _manifest_cases() + _file_cases() + _link_cases() + _vector_cases() + _onnx_cases()
    cases += interventions_cases()[1]  # format 1.1
    cases += forward_compat_cases()[1]  # spec 9.2: the same members in the reader's own version
    cases += trailing_newline_cases()
    cases = [replace_case(c, also=ALSO_REPORTED.get(c.name, ())) for c in cases]
    names = [c.name for c in cases]
    if len(names) != len(set(names)):  # pragma: no cover - programming error
        raise ValueError("duplicate case names")
    return cases


# --------------------------------------------------------------------------
# format 1.1: interventions and the model card (one function, one section)


def interventions_cases() -> tuple[list[Case], list[Case]]:
    """The 1.1 cases: ``(valid, invalid)``."""
    from asa_format.format.contents import BundleContents, InterventionData, bundle_files
    from asa_format.format.interventions import ConditionGate
    from asa_format.format.manifest import ModelBinding

    model = ModelBinding(hidden_size=HIDDEN, id="org/tiny-model", type="llama", num_layers=4)

    def vec(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(HIDDEN).astype(np.float32)

    honesty = InterventionData("honesty", {1: vec(1), 2: vec(2)}, coefficient=1.5)
    refuse = InterventionData(
        "refuse",
        {3: vec(3)},
        coefficient=-2.0,
        condition=ConditionGate((2,), "greater_than", 0.25, "mean"),
        conditions={2: vec(4)},
    )

    def files_of(contents: BundleContents) -> dict[str, bytes]:
        _, files = bundle_files(contents)
        doc = json.loads(files[C.MANIFEST_FILE])
        doc["producer"] = dict(PRODUCER)
        files[C.MANIFEST_FILE] = dumps_canonical(doc)
        return files

    always = files_of(BundleContents(model=model, interventions=[honesty], card=False))
    both = files_of(BundleContents(model=model, interventions=[honesty, refuse]))
    asa = make_test_contents(
        hidden_size=HIDDEN,
        domains=DOMAINS,
        layer=1,
        seed=7,
        model_id="org/tiny-model",
        model_type="llama",
        num_layers=4,
    )
    mixed = files_of(dataclasses.replace(asa, interventions=[honesty, refuse], provenance=None))

    def e(files: dict[str, bytes], fn: Callable[[dict[str, Any]], object]) -> dict[str, bytes]:
        return edit_manifest(files, fn)

    def iv_vectors(
        files: dict[str, bytes], edit: Callable[[dict[str, np.ndarray]], object], dtype: str = "F32"
    ) -> dict[str, bytes]:
        vecs = vectors_of({C.VECTORS_FILE: files[C.INTERVENTIONS_FILE]})
        edit(vecs)
        header, body = tiled(vecs, dtype=dtype, metadata={"format": "asa-bundle"})
        return replace(files, C.INTERVENTIONS_FILE, raw_safetensors(header, body))

    def drop(doc: dict[str, Any], key: str) -> None:
        del doc[key]

    valid = [
        Case(
            "interventions_always",
            "format 1.1: one always intervention on blocks 1 and 2, no card",
            always,
        ),
        Case(
            "interventions_always_condition_card",
            "format 1.1: an always and a condition intervention, with the model card",
            both,
        ),
        Case(
            "interventions_asa_always_condition",
            "format 1.1: the asa intervention with an always and a condition one",
            mixed,
        ),
    ]
    invalid = [
        Case(
            "iv_requires_unknown_feature",
            "requires names a feature no reader implements",
            e(always, lambda d: d["requires"].append("telepathy")),
            "FORMAT_FEATURE_UNSUPPORTED",
        ),
        Case(
            "iv_requires_missing",
            "interventions without requires",
            e(always, lambda d: drop(d, "requires")),
            "MANIFEST_SEMANTIC",
        ),
        Case(
            "iv_version_1_0",
            "interventions in a manifest that says format 1.0",
            e(always, lambda d: d.__setitem__("format_version", "1.0")),
            "MANIFEST_SEMANTIC",
        ),
        Case(
            "iv_duplicate_name",
            "two interventions share a name",
            e(both, lambda d: d["interventions"][1].__setitem__("name", "honesty")),
            "MANIFEST_SEMANTIC",
        ),
        Case(
            "iv_block_out_of_range",
            "a steered block is not below num_layers",
            e(always, lambda d: d["interventions"][0].__setitem__("blocks", [1, 4])),
            "LAYER_OUT_OF_RANGE",
        ),
        Case(
            "iv_blocks_unsorted",
            "blocks are not strictly increasing",
            e(always, lambda d: d["interventions"][0].__setitem__("blocks", [2, 1])),
            "MANIFEST_SEMANTIC",
        ),
        Case(
            "iv_steers_before_condition",
            "a condition intervention steers a block before its condition block",
            e(both, lambda d: d["interventions"][1].__setitem__("blocks", [1])),
            "MANIFEST_SEMANTIC",
        ),
        Case(
            "iv_comparator_unknown",
            "the comparator is not one of the two explicit names",
            e(both, lambda d: d["interventions"][1]["gate"].__setitem__("comparator", "larger")),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "iv_threshold_out_of_range",
            "a cosine threshold outside [-1, 1]",
            e(both, lambda d: d["interventions"][1]["gate"].__setitem__("threshold", 1.5)),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "iv_asa_extra_members",
            "an asa intervention entry with a coefficient",
            e(mixed, lambda d: d["interventions"][0].__setitem__("coefficient", 1.0)),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "iv_asa_members_without_entry",
            "layer/steering/domains without an asa intervention",
            e(mixed, lambda d: d["interventions"].pop(0)),
            "MANIFEST_SEMANTIC",
        ),
        Case(
            "iv_no_asa_no_interventions",
            "neither interventions nor the asa members",
            e(
                always,
                lambda d: [
                    drop(d, "interventions"),
                    drop(d, "requires"),
                    d.__setitem__("format_version", "1.0"),
                ],
            ),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "iv_missing_tensor",
            "a direction tensor is missing",
            iv_vectors(always, lambda v: v.pop("honesty/2/direction")),
            "SAFETENSORS_KEYS",
        ),
        Case(
            "iv_extra_tensor",
            "an unknown tensor",
            iv_vectors(always, lambda v: v.__setitem__("honesty/3/direction", vec(9))),
            "SAFETENSORS_KEYS",
        ),
        Case(
            "iv_nan_direction",
            "a direction holds NaN",
            iv_vectors(always, lambda v: v["honesty/1/direction"].__setitem__(0, np.nan)),
            "SAFETENSORS_NONFINITE",
        ),
        Case(
            "iv_zero_condition",
            "a condition vector is zero",
            iv_vectors(
                both, lambda v: v.__setitem__("refuse/2/condition", np.zeros(HIDDEN, np.float32))
            ),
            "MANIFEST_SEMANTIC",
        ),
        Case(
            "iv_wrong_length",
            "a direction of the wrong length",
            iv_vectors(
                always,
                lambda v: v.__setitem__("honesty/1/direction", np.ones(HIDDEN + 1, np.float32)),
            ),
            "SAFETENSORS_SHAPE",
        ),
        Case(
            "iv_unused_graph",
            "a bundle without asa intervention lists scaler.onnx",
            rehash(
                {
                    **e(
                        always,
                        lambda d: d["files"].__setitem__(
                            C.SCALER_FILE, {"sha256": "0" * 64, "size": 0}
                        ),
                    ),
                    C.SCALER_FILE: asa.scaler,
                }
            ),
            "MANIFEST_SEMANTIC",
        ),
        Case(
            "card_not_utf8",
            "README.md is not UTF-8",
            replace(both, C.CARD_FILE, b"---\nlibrary_name: asa-format\n---\n\xff\xfe"),
            "CARD_INVALID",
        ),
        Case(
            "card_not_required",
            "README.md listed but requires does not name card",
            e(both, lambda d: d["requires"].remove("card")),
            "MANIFEST_SEMANTIC",
        ),
    ]
    return valid, invalid


# --------------------------------------------------------------------------
# spec 9.2: an unknown member at every level of the manifest


# level name -> (base bundle: "plain" (always + condition, provenance) or "asa", path of the object)
FORWARD_LEVELS: dict[str, tuple[str, tuple[str | int, ...]]] = {
    "producer": ("plain", ("producer",)),
    "model": ("plain", ("model",)),
    "files_entry": ("plain", ("files", C.INTERVENTIONS_FILE)),
    "provenance": ("plain", ("provenance",)),
    "provenance_tool": ("plain", ("provenance", "tool")),
    "provenance_input": ("plain", ("provenance", "inputs", "source.gguf")),
    "intervention_always": ("plain", ("interventions", 0)),
    "gate_always": ("plain", ("interventions", 0, "gate")),
    "intervention_condition": ("plain", ("interventions", 1)),
    "gate_condition": ("plain", ("interventions", 1, "gate")),
    "intervention_asa": ("asa", ("interventions", 0)),
    "gate_asa": ("asa", ("interventions", 0, "gate")),
    "layer": ("asa", ("layer",)),
    "domain_entry": ("asa", ("domains", 0)),
}


def forward_compat_cases() -> tuple[list[Case], list[Case]]:
    """One member no version defines, at each level of the manifest: ``(valid, invalid)``.

    Valid: in a format 1.7 manifest (a newer minor version) the member is ignored
    with one ``MANIFEST_SCHEMA`` warning, at every depth, inside the ``oneOf``
    alternatives of an intervention entry and its gate too. Invalid: the same
    member in a 1.1 manifest (the reader's own version) is ``MANIFEST_SCHEMA``.
    """
    from asa_format.format.contents import BundleContents, InterventionData, bundle_files
    from asa_format.format.interventions import ConditionGate
    from asa_format.format.manifest import FileEntry, ModelBinding, Producer, Provenance

    model = ModelBinding(hidden_size=HIDDEN, id="org/tiny-model", type="llama", num_layers=4)

    def vec(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(HIDDEN).astype(np.float32)

    ivs = [
        InterventionData("honesty", {1: vec(1)}, coefficient=1.5),
        InterventionData(
            "refuse",
            {3: vec(3)},
            coefficient=-2.0,
            condition=ConditionGate((2,), "greater_than", 0.25, "mean"),
            conditions={2: vec(4)},
        ),
    ]
    provenance = Provenance(
        source="other",
        tool=Producer("asa-conformance", "1.0"),
        inputs={"source.gguf": FileEntry(size=1, sha256="0" * 64)},
    )
    asa = make_test_contents(
        hidden_size=HIDDEN, domains=DOMAINS, layer=1, seed=7, model_id="org/tiny-model",
        model_type="llama", num_layers=4,
    )  # fmt: skip
    bases: dict[str, dict[str, bytes]] = {}
    for key, contents in (
        ("plain", BundleContents(model=model, interventions=ivs, provenance=provenance, card=False)),
        ("asa", dataclasses.replace(asa, interventions=ivs, card=False, provenance=None)),
    ):  # fmt: skip
        _, files = bundle_files(contents)
        doc = json.loads(files[C.MANIFEST_FILE])
        doc["producer"] = dict(PRODUCER)
        files[C.MANIFEST_FILE] = dumps_canonical(doc)
        bases[key] = files

    def with_member(
        files: dict[str, bytes], path: tuple[str | int, ...], version: str
    ) -> dict[str, bytes]:
        def edit(doc: dict[str, Any]) -> None:
            doc["format_version"] = version
            target: Any = doc
            for part in path:
                target = target[part]
            target["x_future_member"] = {"from": "a later minor version"}

        return edit_manifest(files, edit)

    valid, invalid = [], []
    for level, (base, path) in FORWARD_LEVELS.items():
        where = "$." + ".".join(str(p) for p in path)
        valid.append(
            Case(
                f"newer_minor_unknown_in_{level}",
                f"format 1.7: an unknown member in {where} is ignored, with a warning",
                with_member(bases[base], path, "1.7"),
                warnings=("MANIFEST_SCHEMA",),
            )
        )
        invalid.append(
            Case(
                f"unknown_member_in_{level}",
                f"format 1.1 (the reader's own version): an unknown member in {where}",
                with_member(bases[base], path, C.FORMAT_VERSION),
                "MANIFEST_SCHEMA",
            )
        )
    return valid, invalid


def trailing_newline_cases() -> list[Case]:
    """Strings that end in a newline: a JSON Schema pattern (ECMA-262) ``^...$`` never
    matches them (a Python ``re`` ``$`` would, before the final newline)."""
    plain = base_files(model_id="org/tiny-model", model_type="llama", num_layers=4)

    def e(fn: Callable[[dict[str, Any]], object]) -> dict[str, bytes]:
        return edit_manifest(plain, fn)

    def setitem(path: tuple[str | int, ...], value: Any) -> Callable[[dict[str, Any]], None]:
        def fn(doc: dict[str, Any]) -> None:
            target: Any = doc
            for part in path[:-1]:
                target = target[part]
            target[path[-1]] = value

        return fn

    return [
        Case(
            "newline_model_type",
            "model.type ends in a newline ('llama\\n'): not a label",
            e(setitem(("model", "type"), "llama\n")),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "newline_domain_name",
            "a domain name ends in a newline ('math\\n'): not a domain name",
            e(setitem(("domains", 0, "name"), "math\n")),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "newline_producer_version",
            "producer.version ends in a newline: not a label",
            e(setitem(("producer", "version"), "1.0\n")),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "newline_format_version",
            "format_version is '1.0\\n'",
            e(setitem(("format_version",), "1.0\n")),
            "MANIFEST_SCHEMA",
        ),
        Case(
            "newline_probe_name",
            "a probe file name ends in a newline ('probe_0.onnx\\n')",
            e(setitem(("domains", 0, "probe"), "probe_0.onnx\n")),
            "MANIFEST_SCHEMA",
        ),
    ]


def condition_decision_vectors() -> dict[str, Any]:
    """Decision test vectors for the condition gate (spec section 14.4)."""
    from asa_format.format.interventions import (
        ConditionGate,
        aggregate_rows,
        condition_fires,
        condition_similarity,
    )

    rng = np.random.default_rng(1411)
    cases = []
    for i in range(12):
        seq = 1 + i % 4
        hidden = rng.standard_normal((1, seq, 4)).round(3)
        real = np.ones((1, seq), dtype=bool)
        if seq > 1 and i % 3 == 0:
            real[0, 0] = False  # left padding
        cond = rng.standard_normal(4).round(3)
        gate = ConditionGate(
            (2,),
            ("greater_than", "less_than")[i % 2],
            float(round(rng.uniform(-0.5, 0.5), 3)),
            ("mean", "last")[(i // 2) % 2],
        )
        h = aggregate_rows(hidden, real, gate.aggregate)[0]
        s = condition_similarity(h, cond)
        cases.append(
            {
                "hidden": hidden[0].tolist(),
                "real": real[0].tolist(),
                "condition": cond.tolist(),
                "aggregate": gate.aggregate,
                "comparator": gate.comparator,
                "threshold": gate.threshold,
                "similarity": s,
                "fires": condition_fires([s], gate),
            }
        )
    zero = {
        "hidden": [[0.0, 0.0, 0.0, 0.0]],
        "real": [True],
        "condition": [1.0, 0.0, 0.0, 0.0],
        "aggregate": "last",
        "comparator": "less_than",
        "threshold": 0.1,
        "similarity": 0.0,
        "fires": True,
    }
    cases.append(zero)
    return {
        "description": "condition gate decisions (SPEC section 14.4): one condition block, one row",
        "cases": cases,
    }


# --------------------------------------------------------------------------
# writing


def _write_entries(root: Path, entries: Files) -> None:
    for rel in sorted(entries):
        item = entries[rel]
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(item, Symlink):
            os.symlink(item.target, path)
        else:
            path.write_bytes(item)


def write_case(case: Case, kind_dir: Path) -> Path:
    """Write ``case`` under ``kind_dir/<name>/``; return the bundle path."""
    case_dir = kind_dir / case.name
    case_dir.mkdir(parents=True)
    _write_entries(case_dir, case.outside)
    bundle = case_dir / "bundle"
    if case.bundle_link is not None:
        os.symlink(case.bundle_link, bundle)
    else:
        bundle.mkdir()
        _write_entries(bundle, case.bundle)
    (case_dir / "expected.json").write_bytes(dumps_canonical(case.expected()))
    if case.code is None and case.bundle_link is None:
        files = {k: v for k, v in case.bundle.items() if isinstance(v, bytes)}
        manifest = json.loads(files[C.MANIFEST_FILE])
        if "steering" in manifest:  # format 1.1: only a bundle with an asa intervention decides
            doc = decision_vectors(case.name, manifest, files)
            (case_dir / DECISIONS_FILE).write_bytes(dumps_canonical(doc))
        if C.INTERVENTIONS_FILE in files:  # condition gates: their own decision vectors
            from asa_format.format.safetensors import parse_vectors

            tensors, _ = parse_vectors(
                files[C.INTERVENTIONS_FILE], hidden_size=None, names=None, unit_norm=False
            )
            conditions: dict[str, dict[int, Any]] = {}
            for name, arr in tensors.items():
                iv, block, role = name.split("/")
                if role == C.CONDITION_ROLE:
                    conditions.setdefault(iv, {})[int(block)] = arr
            cdoc = condition_vectors(case.name, manifest, conditions)
            if cdoc is not None:
                (case_dir / CONDITIONS_FILE).write_bytes(dumps_canonical(cdoc))
    return bundle


def generate(out: Path) -> None:
    """(Re)write ``out/valid`` and ``out/invalid`` from scratch."""
    for kind, cases in (("valid", valid_cases()), ("invalid", invalid_cases())):
        target = out / kind
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for case in cases:
            write_case(case, target)
    (out / "condition_decisions.json").write_bytes(
        dumps_canonical(condition_decision_vectors())
    )  # format 1.1


# --------------------------------------------------------------------------
# cases built at test time (git cannot store them)

_RUNTIME: dict[str, tuple[str, str]] = {
    "hardlink_outside": (
        "PATH_HARDLINK",
        "vectors.safetensors is a hard link to a file outside the bundle",
    ),
    "hardlink_manifest": (
        "PATH_HARDLINK",
        "manifest.json is a hard link to a file outside the bundle",
    ),
    "fifo_listed": ("PATH_NOT_REGULAR", "vectors.safetensors is a FIFO (reading must not block)"),
    "fifo_manifest": ("PATH_NOT_REGULAR", "manifest.json is a FIFO (reading must not block)"),
    "fifo_unlisted": ("FILE_UNLISTED", "an unlisted FIFO next to the bundle files"),
    "manifest_over_cap": ("MANIFEST_TOO_LARGE", "manifest.json is just over 1 MiB"),
    "unreadable_file": ("IO_ERROR", "router.onnx cannot be read (mode 000)"),
}


def runtime_case_names() -> list[str]:
    """Names of the test-time cases that apply on this platform and user."""
    names = sorted(_RUNTIME)
    if not hasattr(os, "mkfifo"):
        names = [n for n in names if not n.startswith("fifo")]
    if not hasattr(os, "geteuid") or os.geteuid() == 0:  # root reads mode-000 files
        names.remove("unreadable_file")
    return names


def build_runtime_case(name: str, tmp: Path) -> tuple[Path, str, str]:
    """Build test-time case ``name`` under ``tmp``; return (bundle path, code, description)."""
    code, description = _RUNTIME[name]
    files = base_files()
    bundle = tmp / name / "bundle"
    bundle.mkdir(parents=True)
    if name == "manifest_over_cap":
        doc = manifest_doc(files)
        doc["provenance"]["metadata"]["padding"] = "x" * C.MAX_MANIFEST_BYTES
        files = with_manifest(files, doc)
    skip = {
        "hardlink_outside": C.VECTORS_FILE,
        "fifo_listed": C.VECTORS_FILE,
        "hardlink_manifest": C.MANIFEST_FILE,
        "fifo_manifest": C.MANIFEST_FILE,
    }.get(name)
    _write_entries(bundle, {k: v for k, v in files.items() if k != skip})
    if name.startswith("hardlink"):
        assert skip is not None
        outside = tmp / name / f"outside-{skip}"
        outside.write_bytes(files[skip])
        os.link(outside, bundle / skip)
    elif name in ("fifo_listed", "fifo_manifest"):
        assert skip is not None
        os.mkfifo(bundle / skip)
    elif name == "fifo_unlisted":
        os.mkfifo(bundle / "pipe")
    elif name == "unreadable_file":
        os.chmod(bundle / C.ROUTER_FILE, 0)
    return bundle, code, description


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="corpus root (default: next to this script)",
    )
    args = parser.parse_args(argv)
    generate(args.out)
    n_valid = len(list((args.out / "valid").iterdir()))
    n_invalid = len(list((args.out / "invalid").iterdir()))
    print(f"wrote {n_valid} valid and {n_invalid} invalid cases under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
