"""Read and check a bundle directory: the one code path of validate and load.

Order (each file is read once; the same bytes are hashed, checked and parsed):

1. the bundle path: an existing directory, not a symlink;
2. the directory listing: only regular files, no symlinks, no hard links,
   no file that the manifest does not list (the signature file excepted);
3. the manifest: size cap, strict JSON, schema, semantic rules;
4. every listed file: opened without following links, size and sha256
   against the manifest, size cap of its role;
5. ``vectors.safetensors`` against the safetensors profile;
6. every graph against the ONNX profile (static checks on the protobuf);
7. only then, onnxruntime sessions from the checked bytes, and one smoke
   evaluation that checks output shapes against the manifest.

Nothing is created from a file that failed a check before it.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format.errors import ErrorCode, Problem
from asa_format.format.interventions import tensor_problems, zero_condition_problems
from asa_format.format.manifest import Manifest, parse_manifest
from asa_format.format.safetensors import parse_vectors
from asa_format.graphs.profile import check_onnx, session_problems

__all__ = [
    "ReadResult",
    "check_regular",
    "open_regular",
    "read_bundle_dir",
    "session_options",
    "size_cap",
]


@dataclass
class ReadResult:
    path: Path
    manifest: Manifest | None = None
    manifest_bytes: bytes | None = None
    file_sha256: dict[str, str] = field(default_factory=dict)  # every file read, manifest included
    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    intervention_vectors: dict[str, np.ndarray] = field(default_factory=dict)  # format 1.1
    card: str | None = None  # format 1.1: README.md
    sessions: dict[str, Any] = field(default_factory=dict)  # file name -> InferenceSession
    graph_bytes: dict[str, bytes] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)  # file name -> checked onnx.ModelProto
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _p(code: ErrorCode, message: str, hint: str, file: str | None = None) -> Problem:
    return Problem(code=code, message=message, file=file, hint=hint)


def open_regular(path: Path, name: str) -> tuple[int, os.stat_result] | Problem:
    """Open ``path`` read-only without following links; refuse anything but a regular file.

    Returns the open descriptor (the caller closes it) and its ``fstat``, or
    the problem (FILE_MISSING, PATH_SYMLINK, PATH_NOT_REGULAR, IO_ERROR).
    """
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it is then refused as not regular)
    flags = (
        os.O_RDONLY
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_BINARY", 0)
    )
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return _p(
            "FILE_MISSING",
            "listed in the manifest but not present",
            "add the file or fix the manifest",
            name,
        )
    except OSError as exc:
        if os.path.islink(path):
            return _p(
                "PATH_SYMLINK", "is a symbolic link", "replace the link by the file itself", name
            )
        return _p("IO_ERROR", f"cannot be opened: {exc.strerror}", "check permissions", name)
    try:
        st = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        return _p("IO_ERROR", f"cannot be read: {exc.strerror}", "check the file system", name)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return _p(
            "PATH_NOT_REGULAR",
            "is not a regular file",
            "bundle entries must be regular files",
            name,
        )
    return fd, st


def _read_regular(path: Path, name: str, cap: int) -> tuple[bytes | None, Problem | None]:
    """Open ``path`` without following links and read at most ``cap`` bytes."""
    opened = open_regular(path, name)
    if isinstance(opened, Problem):
        return None, opened
    fd, st = opened
    try:
        if st.st_nlink > 1:
            return None, _p(
                "PATH_HARDLINK",
                f"has {st.st_nlink} hard links",
                "copy the file instead of hard-linking it (a link can point outside the bundle)",
                name,
            )
        if st.st_size > cap:
            return None, _p(
                "FILE_TOO_LARGE",
                f"is {st.st_size} bytes, over the cap of {cap}",
                "see the spec's size caps",
                name,
            )
        chunks = []
        remaining = cap + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > cap:
            return None, _p(
                "FILE_TOO_LARGE",
                f"is over the cap of {cap} bytes",
                "see the spec's size caps",
                name,
            )
        return data, None
    except OSError as exc:
        return None, _p(
            "IO_ERROR", f"cannot be read: {exc.strerror}", "check the file system", name
        )
    finally:
        os.close(fd)


def size_cap(name: str) -> int:
    """The size cap of a bundle file by its name (section 2.4); graphs and unknown names: MAX_ONNX_BYTES."""
    caps = {
        C.MANIFEST_FILE: C.MAX_MANIFEST_BYTES,
        C.VECTORS_FILE: C.MAX_VECTORS_BYTES,
        C.INTERVENTIONS_FILE: C.MAX_INTERVENTIONS_BYTES,
        C.CARD_FILE: C.MAX_CARD_BYTES,
        C.SIGNATURE_FILE: C.MAX_SIGNATURE_BYTES,
    }
    return caps.get(name, C.MAX_ONNX_BYTES)


_cap_for = size_cap


def check_regular(path: Path, name: str, cap: int) -> Problem | None:
    """The entry checks without reading: a regular file, one link, at most ``cap`` bytes."""
    opened = open_regular(path, name)
    if isinstance(opened, Problem):
        return opened
    fd, st = opened
    os.close(fd)
    if st.st_nlink > 1:
        return _p(
            "PATH_HARDLINK",
            f"has {st.st_nlink} hard links",
            "copy the file instead of hard-linking it",
            name,
        )
    if st.st_size > cap:
        return _p(
            "FILE_TOO_LARGE",
            f"is {st.st_size} bytes, over the cap of {cap}",
            "see the spec's size caps",
            name,
        )
    return None


def session_options() -> Any:
    """onnxruntime options used for every bundle graph (see the spec)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    # No graph rewriting: the session runs the checked graph's own nodes, so what it accepts
    # follows from the nodes alone (types, attributes, kernels) and the static checks predict
    # it without onnxruntime (asa_format.onnx_session); fused kernels reject inputs the
    # separate nodes accept (a MatMul and a Mul by an infinite constant, for one).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.add_session_config_entry("session.load_model_format", "ONNX")
    return so


def read_bundle_dir(
    path: str | os.PathLike[str],
    *,
    verify: bool = True,
    create_sessions: bool = True,
    signature_name: str = C.SIGNATURE_FILE,
    keep_models: bool = False,
    predict_sessions: bool = False,
) -> ReadResult:
    """Read and check a bundle; collect every problem instead of stopping at the first.

    With ``create_sessions`` each checked graph is loaded into onnxruntime and
    evaluated once, then released. ``predict_sessions`` (without
    ``create_sessions``) predicts that step statically instead, without
    importing onnxruntime (``onnx_profile.session_problems``). ``keep_models``
    keeps the parsed models for the loader's fast path.
    """
    root = Path(path)
    result = ReadResult(path=root)
    problems = result.problems

    if root.is_symlink():
        problems.append(
            _p(
                "PATH_SYMLINK",
                f"bundle directory {str(root)!r} is a symbolic link",
                "pass the real directory",
            )
        )
        return result
    if not root.is_dir():
        problems.append(
            _p(
                "BUNDLE_NOT_FOUND",
                f"{str(root)!r} is not a directory",
                "pass the path of a bundle directory (it holds manifest.json)",
            )
        )
        return result

    # 2. listing ---------------------------------------------------------------
    try:
        entries = []
        with os.scandir(root) as it:
            for entry in it:
                entries.append(entry)
                if len(entries) > C.MAX_FILES + 2:
                    problems.append(
                        _p(
                            "FILE_UNLISTED",
                            f"the bundle directory holds more than {C.MAX_FILES + 2} entries",
                            "a bundle holds its manifest, its listed files "
                            "and an optional signature",
                        )
                    )
                    return result
        entries.sort(key=lambda e: e.name)
    except OSError as exc:
        problems.append(
            _p("IO_ERROR", f"cannot list {str(root)!r}: {exc.strerror}", "check permissions")
        )
        return result
    present: dict[str, os.DirEntry[str]] = {e.name: e for e in entries}

    # 3. manifest ----------------------------------------------------------------
    if C.MANIFEST_FILE not in present:
        problems.append(
            _p(
                "MANIFEST_MISSING",
                "the bundle has no manifest.json",
                "a bundle directory holds manifest.json and the files it lists",
                C.MANIFEST_FILE,
            )
        )
        return result
    data, problem = _read_regular(root / C.MANIFEST_FILE, C.MANIFEST_FILE, C.MAX_MANIFEST_BYTES)
    if problem is not None:
        if problem.code == "FILE_TOO_LARGE":
            problem = _p(
                "MANIFEST_TOO_LARGE",
                problem.message,
                "a valid manifest is a few kilobytes",
                C.MANIFEST_FILE,
            )
        problems.append(problem)
        return result
    assert data is not None
    result.manifest_bytes = data
    result.file_sha256[C.MANIFEST_FILE] = hashlib.sha256(data).hexdigest()
    manifest, errors, warnings = parse_manifest(data)
    result.warnings.extend(warnings)
    problems.extend(errors)

    listed: set[str] = set(manifest.files) if manifest is not None else set()
    for name, entry in present.items():
        if name == C.MANIFEST_FILE:
            continue
        if entry.is_symlink():
            problems.append(
                _p(
                    "PATH_SYMLINK",
                    "is a symbolic link",
                    "replace the link by the file itself",
                    name,
                )
            )
        elif entry.is_dir(follow_symlinks=False):
            problems.append(
                _p(
                    "PATH_NOT_REGULAR",
                    "is a directory",
                    "bundles are flat: remove the directory",
                    name,
                )
            )
        elif (
            name == signature_name
        ):  # not read here, but held to the same entry rules (section 2.3)
            sig_problem = check_regular(root / name, name, C.MAX_SIGNATURE_BYTES)
            if sig_problem is not None:
                problems.append(sig_problem)
        elif manifest is not None and name not in listed:
            problems.append(
                _p(
                    "FILE_UNLISTED",
                    "is not listed in the manifest",
                    "remove the file, or list it in manifest.json",
                    name,
                )
            )
    if manifest is None:
        return result
    result.manifest = manifest

    # 4. listed files ---------------------------------------------------------------
    contents: dict[str, bytes] = {}
    for name in sorted(listed):
        expected = manifest.files[name]
        if name in present and (
            present[name].is_symlink() or present[name].is_dir(follow_symlinks=False)
        ):
            continue  # reported above
        data, problem = _read_regular(root / name, name, _cap_for(name))
        if problem is not None:
            problems.append(problem)
            continue
        assert data is not None
        digest = hashlib.sha256(data).hexdigest()
        result.file_sha256[name] = digest
        if verify:
            if len(data) != expected.size:
                problems.append(
                    _p(
                        "FILE_SIZE_MISMATCH",
                        f"is {len(data)} bytes, the manifest says {expected.size}",
                        "the file was modified or truncated; restore it or rebuild the bundle",
                        name,
                    )
                )
                continue
            if digest != expected.sha256:
                problems.append(
                    _p(
                        "FILE_HASH_MISMATCH",
                        f"has sha256 {digest}, the manifest says {expected.sha256}",
                        "the file was modified; restore it or rebuild the bundle",
                        name,
                    )
                )
                continue
        contents[name] = data

    hidden = manifest.model.hidden_size
    names = manifest.domain_names

    # 5. vectors ---------------------------------------------------------------------
    if C.VECTORS_FILE in contents:
        vectors, vproblems = parse_vectors(
            contents[C.VECTORS_FILE], hidden_size=hidden, names=names
        )
        problems.extend(vproblems)
        result.vectors = vectors
    if C.INTERVENTIONS_FILE in contents:  # format 1.1
        ivectors, vproblems = parse_vectors(
            contents[C.INTERVENTIONS_FILE],
            hidden_size=hidden,
            names=None,
            file=C.INTERVENTIONS_FILE,
            unit_norm=False,
        )
        problems.extend(vproblems)
        if not vproblems:
            vproblems = tensor_problems(manifest.interventions, list(ivectors))
            vproblems += zero_condition_problems(manifest.interventions, ivectors)
            problems.extend(vproblems)
        result.intervention_vectors = ivectors if not vproblems else {}
    if C.CARD_FILE in contents:  # format 1.1: informative text, but it must be text
        try:
            result.card = contents[C.CARD_FILE].decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                _p(
                    "CARD_INVALID",
                    f"is not valid UTF-8 at byte {exc.start}",
                    "write the model card as UTF-8 Markdown",
                    C.CARD_FILE,
                )
            )

    # 6. graphs ------------------------------------------------------------------------
    graph_files = [C.SCALER_FILE, C.ROUTER_FILE] + [d.probe for d in manifest.domains if d.probe]
    checked: dict[str, bytes] = {}
    models: dict[str, Any] = {}
    for name in graph_files:
        if name not in contents:
            continue
        n_classes = len(names) if name == C.ROUTER_FILE else 2
        model, gproblems = check_onnx(
            contents[name], file=name, hidden_size=hidden, n_classes=n_classes
        )
        problems.extend(gproblems)
        if model is not None and not gproblems:
            checked[name] = contents[name]
            models[name] = model
        del model
    result.graph_bytes = checked
    if keep_models:
        result.models = models

    # 7. sessions -----------------------------------------------------------------------
    if create_sessions and not problems:
        _create_sessions(result, checked, hidden, len(names), keep=False)
    elif predict_sessions and not problems:
        for name, model in models.items():
            n_classes = len(names) if name == C.ROUTER_FILE else 2
            problems.extend(
                session_problems(model, file=name, hidden_size=hidden, n_classes=n_classes)
            )
    return result


def _create_sessions(
    result: ReadResult, graphs: dict[str, bytes], hidden: int, n_domains: int, *, keep: bool = True
) -> None:
    import onnxruntime as ort

    options = session_options()
    probe_in = np.zeros((2, hidden), dtype=np.float32)
    for name, data in graphs.items():
        try:
            session = ort.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            result.problems.append(
                _p(
                    "ONNX_SESSION",
                    f"onnxruntime cannot load the graph: {str(exc).splitlines()[0][:300]}",
                    "re-export the graph",
                    name,
                )
            )
            continue
        feed: dict[str, np.ndarray] = (
            {C.SCALER_INPUT: probe_in}
            if name == C.SCALER_FILE
            else {C.CLASSIFIER_INPUT: probe_in.astype(np.float64)}
        )
        try:
            outputs = session.run(None, feed)
        except Exception as exc:
            result.problems.append(
                _p(
                    "ONNX_SESSION",
                    f"evaluating the graph on a [2, {hidden}] input "
                    f"failed: {str(exc).splitlines()[0][:300]}",
                    "the graph's weights must match the manifest's hidden size",
                    name,
                )
            )
            continue
        expected = (
            [(2, hidden)]
            if name == C.SCALER_FILE
            else [(2,), (2, n_domains if name == C.ROUTER_FILE else 2)]
        )
        shapes = [tuple(o.shape) for o in outputs]
        if shapes != expected:
            code: ErrorCode = "HIDDEN_SIZE_MISMATCH" if name == C.SCALER_FILE else "DOMAIN_MISMATCH"
            result.problems.append(
                _p(
                    code,
                    f"on a [2, {hidden}] input the graph returns shapes {shapes}, "
                    f"expected {expected}",
                    "the graph must match the manifest's hidden size and domains",
                    name,
                )
            )
            continue
        if keep:
            result.sessions[name] = session
        del session, outputs
