"""Read a legacy ASA asset directory (``asa_assets/``) as inert data.

``read_legacy_bundle`` reads ``config.json``, ``steering_vectors.npz`` and the
three pickles, each file once: the same bytes are hashed (for ``sources``) and
parsed. The npz archive is parsed by hand (``zipfile`` plus the ``.npy``
header read with ``ast.literal_eval``); the pickles go through
:func:`asa_format.converters.safe_pickle.safe_load_pickle`. Nothing in the
directory is executed.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from asa_format.constants import (
    GLOBAL_VECTOR,
    MAX_DOMAINS,
    MAX_HIDDEN_SIZE,
    MAX_MANIFEST_BYTES,
    MAX_VECTORS_BYTES,
    UNIT_NORM_TOLERANCE,
)
from asa_format.converters.legacy_model import (
    LegacyAssets,
    LegacyConfig,
    LegacyLogisticRegression,
    LegacyScaler,
    SourceFile,
)
from asa_format.converters.pickle_allowlist import MAX_PICKLE_BYTES
from asa_format.converters.pickle_records import to_legacy_logistic, to_legacy_scaler
from asa_format.converters.safe_pickle import safe_load_pickle
from asa_format.errors import AsaError, ErrorCode, LegacyFormatError, UnsafePickleError
from asa_format.format.jsonio import DuplicateKeyError, JsonLimitError, loads_strict
from asa_format.storage.inputs import read_input

__all__ = [
    "LEGACY_CONFIG_FILE",
    "LEGACY_FILES",
    "LEGACY_PROBES_FILE",
    "LEGACY_ROUTER_FILE",
    "LEGACY_SCALER_FILE",
    "LEGACY_VECTORS_FILE",
    "parse_legacy_config",
    "parse_steering_npz",
    "read_legacy_bundle",
]

LEGACY_CONFIG_FILE = "config.json"
LEGACY_VECTORS_FILE = "steering_vectors.npz"
LEGACY_SCALER_FILE = "scaler.pkl"
LEGACY_ROUTER_FILE = "router.pkl"
LEGACY_PROBES_FILE = "probes.pkl"
LEGACY_FILES = (
    LEGACY_CONFIG_FILE,
    LEGACY_VECTORS_FILE,
    LEGACY_SCALER_FILE,
    LEGACY_ROUTER_FILE,
    LEGACY_PROBES_FILE,
)

REQUIRED_CONFIG_KEYS = ("L_star", "alpha", "tau", "beta", "domains")
MAX_CONFIG_BYTES = MAX_MANIFEST_BYTES
MAX_NPY_HEADER_BYTES = 1 << 16
MAX_NPY_MEMBER_BYTES = (
    12 + MAX_NPY_HEADER_BYTES + 4 * MAX_HIDDEN_SIZE
)  # one .npy vector at the hidden-size cap
_SIZE_CAPS = {
    LEGACY_CONFIG_FILE: MAX_CONFIG_BYTES,
    LEGACY_VECTORS_FILE: MAX_VECTORS_BYTES,
    LEGACY_SCALER_FILE: MAX_PICKLE_BYTES,
    LEGACY_ROUTER_FILE: MAX_PICKLE_BYTES,
    LEGACY_PROBES_FILE: MAX_PICKLE_BYTES,
}
_NPY_MAGIC = b"\x93NUMPY"


def _error(code: ErrorCode, file: str, message: str, hint: str) -> LegacyFormatError:
    return LegacyFormatError(message, code=code, file=file, hint=hint)


# --------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------


def _config_error(message: str) -> LegacyFormatError:
    return _error(
        "LEGACY_CONFIG",
        LEGACY_CONFIG_FILE,
        message,
        "fix config.json: it needs L_star (int >= 0), alpha, beta (numbers), "
        "tau (0.5 to 1) and domains (unique, non-empty names)",
    )


def _json_safe(value: Any) -> Any:
    """Map non-finite floats to the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        if math.isnan(value):
            return "NaN"
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _number(config: dict[str, Any], key: str) -> float:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _config_error(f"{key} must be a number, found {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise _config_error(f"{key} must be finite, found {value}")
    return number


def parse_legacy_config(data: bytes) -> LegacyConfig:
    """Parse and check ``config.json`` bytes."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _config_error(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    try:
        config = loads_strict(text, nonfinite=True)  # Python's json writes NaN / Infinity
    except DuplicateKeyError as exc:
        raise _config_error(f"key {exc.key!r} appears twice in one object") from exc
    except JsonLimitError as exc:  # depth, digits, lone surrogates, non-characters
        raise _config_error(f"not accepted: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise _config_error(
            f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc
    if not isinstance(config, dict):
        raise _config_error(f"top level must be an object, found {type(config).__name__}")
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in config]
    if missing:
        raise _config_error(f"missing required key(s): {', '.join(missing)}")

    layer = config["L_star"]
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise _config_error(f"L_star must be an integer >= 0, found {layer!r}")
    alpha = _number(config, "alpha")
    tau = _number(config, "tau")
    if not 0.5 <= tau <= 1.0:
        raise _config_error(f"tau must be in [0.5, 1], found {tau}")
    beta = _number(config, "beta")
    if not 0.0 <= beta <= 1.0:
        raise _config_error(f"beta must be in [0, 1], found {beta}")

    domains = config["domains"]
    if not isinstance(domains, list) or not domains:
        raise _config_error("domains must be a non-empty list of names")
    if len(domains) > MAX_DOMAINS:
        raise _config_error(f"domains lists {len(domains)} names, above the cap of {MAX_DOMAINS}")
    seen: set[str] = set()
    for name in domains:
        if not isinstance(name, str) or not name:
            raise _config_error(f"domain names must be non-empty strings, found {name!r}")
        if name == GLOBAL_VECTOR:
            raise _config_error(f"{GLOBAL_VECTOR!r} is reserved and cannot be a domain name")
        if name in seen:
            raise _config_error(f"domain {name!r} is listed twice")
        seen.add(name)

    model_id = config.get("model")
    if model_id is not None and (not isinstance(model_id, str) or not model_id):
        raise _config_error(f"model must be a non-empty string, found {model_id!r}")
    extra = {
        key: _json_safe(value)
        for key, value in config.items()
        if key not in REQUIRED_CONFIG_KEYS and key != "model"
    }
    return LegacyConfig(
        raw=config,
        domains=list(domains),
        layer=layer,
        alpha=alpha,
        tau=tau,
        beta=beta,
        model_id=model_id,
        extra=extra,
    )


# --------------------------------------------------------------------------
# steering_vectors.npz
# --------------------------------------------------------------------------


def _npz_error(message: str) -> LegacyFormatError:
    return _error(
        "NPZ_INVALID",
        LEGACY_VECTORS_FILE,
        message,
        "write the vectors with numpy.savez: one float32 [hidden] unit-norm array "
        "per domain plus 'global', no object arrays",
    )


def _parse_npy(name: str, raw: bytes) -> np.ndarray:
    if not raw.startswith(_NPY_MAGIC) or len(raw) < 10:
        raise _npz_error(f"member {name!r} is not a .npy array")
    major = raw[6]
    if major == 1:
        (header_len,) = struct.unpack("<H", raw[8:10])
        start = 10
    elif major in (2, 3):
        if len(raw) < 12:
            raise _npz_error(f"member {name!r} is truncated")
        (header_len,) = struct.unpack("<I", raw[8:12])
        start = 12
    else:
        raise _npz_error(f"member {name!r} uses .npy format version {major}")
    if header_len > MAX_NPY_HEADER_BYTES or start + header_len > len(raw):
        raise _npz_error(f"member {name!r} has a bad .npy header length")
    try:
        header_text = raw[start : start + header_len].decode("utf-8" if major == 3 else "latin1")
        header = ast.literal_eval(header_text)
    except (
        UnicodeDecodeError,
        ValueError,
        SyntaxError,
        TypeError,
        MemoryError,
        RecursionError,
    ) as exc:
        raise _npz_error(f"member {name!r} has an unreadable .npy header") from exc
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise _npz_error(f"member {name!r} has an unexpected .npy header {header!r}")
    descr, shape = header["descr"], header["shape"]
    if descr not in ("<f4", ">f4"):
        raise _npz_error(
            f"vector {name!r} has dtype {descr!r}; float32 ('<f4') is required "
            "(object arrays are never accepted)"
        )
    if (
        not isinstance(shape, tuple)
        or len(shape) != 1
        or not isinstance(shape[0], int)
        or isinstance(shape[0], bool)
        or not 1 <= shape[0] <= MAX_HIDDEN_SIZE
    ):
        raise _npz_error(f"vector {name!r} has shape {shape!r}; a 1-D [hidden] array is required")
    if not isinstance(header["fortran_order"], bool):
        raise _npz_error(f"member {name!r} has a non-boolean fortran_order")
    data = raw[start + header_len :]
    if len(data) != shape[0] * 4:
        raise _npz_error(f"vector {name!r} has {len(data)} data bytes, expected {shape[0] * 4}")
    return np.frombuffer(data, dtype=np.dtype(descr)).astype(np.float32)


def parse_steering_npz(data: bytes, domains: list[str]) -> dict[str, np.ndarray]:
    """Parse ``steering_vectors.npz`` bytes into ``{name: float32 [hidden]}``.

    Every domain and ``global`` must be present, with one hidden size, finite
    values and unit L2 norm (within ``UNIT_NORM_TOLERANCE``).
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise _npz_error(f"not a valid zip archive ({exc})") from exc
    infos = archive.infolist()
    if len(infos) > MAX_DOMAINS + 1:
        raise _npz_error(f"archive has {len(infos)} members, above the cap")
    expected = [*domains, GLOBAL_VECTOR]
    vectors: dict[str, np.ndarray] = {}
    budget = MAX_VECTORS_BYTES
    member_cap = MAX_NPY_MEMBER_BYTES  # one [hidden] float32 vector and its header
    for info in infos:
        member = info.filename
        if not member.endswith(".npy") or "/" in member or "\\" in member:
            raise _npz_error(f"member {member!r} is not a top-level .npy file")
        name = member[: -len(".npy")]
        if name in vectors:
            raise _npz_error(f"vector {name!r} appears twice in the archive")
        if name not in expected:
            raise _npz_error(
                f"vector {name!r} is not a domain of config.json nor {GLOBAL_VECTOR!r}"
            )
        if info.flag_bits & 0x1:
            raise _npz_error(f"member {member!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _npz_error(
                f"member {member!r} uses compression method {info.compress_type}; numpy.savez "
                "writes stored or deflated members only"
            )
        if info.file_size > member_cap:  # the declared size, before anything is inflated
            raise _npz_error(
                f"member {member!r} declares {info.file_size} bytes, over the cap of {member_cap}"
            )
        try:
            with archive.open(info) as handle:
                raw = handle.read(min(member_cap, budget) + 1)
        except (
            zipfile.BadZipFile,
            NotImplementedError,
            OSError,
            ValueError,
            EOFError,
            zlib.error,
        ) as exc:
            raise _npz_error(
                f"member {member!r} cannot be read, the archive is damaged ({exc})"
            ) from exc
        if len(raw) > member_cap:
            raise _npz_error(f"member {member!r} inflates past the cap of {member_cap} bytes")
        budget -= len(raw)
        if budget < 0:
            raise _npz_error(f"archive expands beyond {MAX_VECTORS_BYTES} bytes")
        vectors[name] = _parse_npy(name, raw)
        del raw
        # every vector has the hidden size of the first: later members are capped at its size
        member_cap = min(member_cap, 12 + MAX_NPY_HEADER_BYTES + 4 * vectors[name].shape[0])
    missing = [name for name in expected if name not in vectors]
    if missing:
        raise _npz_error(f"missing vector(s): {', '.join(repr(m) for m in missing)}")
    hidden = vectors[GLOBAL_VECTOR].shape[0]
    for name in expected:
        vector = vectors[name]
        if vector.shape[0] != hidden:
            raise _npz_error(
                f"vector {name!r} has size {vector.shape[0]} but {GLOBAL_VECTOR!r} has {hidden}"
            )
        if not np.all(np.isfinite(vector)):
            raise _npz_error(f"vector {name!r} contains NaN or infinity")
        norm = float(np.linalg.norm(vector.astype(np.float64)))
        if abs(norm - 1.0) > UNIT_NORM_TOLERANCE:
            raise _npz_error(
                f"vector {name!r} has L2 norm {norm:.6g}; unit norm (within "
                f"{UNIT_NORM_TOLERANCE}) is required"
            )
    return {name: vectors[name] for name in expected}


# --------------------------------------------------------------------------
# consistency checks
# --------------------------------------------------------------------------


def _content_error(file: str, message: str) -> LegacyFormatError:
    return _error(
        "LEGACY_CONTENT",
        file,
        message,
        "the scaler, router, probes, vectors and config.json must come from one fitted pipeline",
    )


def _check_router(router: LegacyLogisticRegression, domains: list[str]) -> None:
    n = len(domains)
    classes = router.classes
    if classes.shape[0] != n:
        raise _content_error(
            LEGACY_ROUTER_FILE,
            f"router has {classes.shape[0]} classes but config.json lists {n} domains",
        )
    if classes.dtype.kind in "iu":
        if sorted(int(c) for c in classes) != list(range(n)):
            raise _content_error(
                LEGACY_ROUTER_FILE,
                f"router classes_ {classes.tolist()} are not the indices 0..{n - 1} of the domains",
            )
    elif classes.dtype.kind == "U":
        names = [str(c) for c in classes]
        if sorted(names) != sorted(domains):
            unknown = sorted(set(names) - set(domains))
            absent = sorted(set(domains) - set(names))
            raise _content_error(
                LEGACY_ROUTER_FILE,
                f"router classes_ do not match the domains (unknown: {unknown}, missing: {absent})",
            )
    else:
        raise _content_error(
            LEGACY_ROUTER_FILE,
            f"router classes_ has dtype {classes.dtype.str}; domain indices or names are required",
        )


def _check_probe(name: str, probe: LegacyLogisticRegression) -> None:
    classes = probe.classes
    if classes.dtype.kind not in "iub" or [int(c) for c in classes] != [0, 1]:
        raise _content_error(
            LEGACY_PROBES_FILE,
            f"probe {name!r} has classes_ {classes.tolist()}; "
            "a binary probe with classes [0, 1] is required",
        )


def _check_shapes(
    hidden: int,
    vectors: dict[str, np.ndarray],
    router: LegacyLogisticRegression,
    probes: dict[str, LegacyLogisticRegression],
) -> None:
    vector_size = vectors[GLOBAL_VECTOR].shape[0]
    if vector_size != hidden:
        raise _content_error(
            LEGACY_VECTORS_FILE,
            f"steering vectors have size {vector_size} but the scaler has {hidden} features",
        )
    if router.coef.shape[1] != hidden:
        raise _content_error(
            LEGACY_ROUTER_FILE,
            f"router coef_ has {router.coef.shape[1]} columns but the scaler has {hidden} features",
        )
    for name, probe in probes.items():
        if probe.coef.shape != (1, hidden):
            raise _content_error(
                LEGACY_PROBES_FILE,
                f"probe {name!r} coef_ has shape {probe.coef.shape}, expected (1, {hidden})",
            )


# --------------------------------------------------------------------------
# the whole directory
# --------------------------------------------------------------------------


def _read_file(directory: Path, name: str) -> bytes:
    path = directory / name
    if not path.is_file():
        raise _error(
            "LEGACY_MISSING_FILE",
            name,
            f"{name} is missing from {directory}",
            f"a legacy ASA asset directory holds {', '.join(LEGACY_FILES)}",
        )
    cap = _SIZE_CAPS[name]
    data: bytes | None = None
    try:  # a regular file (never a FIFO swapped in after the check above), at most cap bytes
        data = read_input(path, what=name, cap=cap)
    except AsaError as exc:
        if exc.code == "IO_ERROR":
            raise LegacyFormatError(exc.message, code="IO_ERROR", file=name) from None
        if exc.code != "INPUT_TOO_LARGE":
            raise
    if data is None:  # over the cap: reported with the codes of the legacy reader
        message = f"{name} is larger than the cap of {cap} bytes"
        if name.endswith(".pkl"):
            raise UnsafePickleError(
                message, code="PICKLE_TOO_LARGE", file=name, hint="check the file", offset=0
            )
        raise _error("LEGACY_CONTENT", name, message, "check the file")
    return data


def read_legacy_bundle(path: str | os.PathLike[str]) -> LegacyAssets:
    """Read and check a legacy ASA asset directory; never executes its pickles."""
    directory = Path(path)
    if not directory.is_dir():
        raise _error(
            "LEGACY_MISSING_FILE",
            str(directory),
            f"legacy asset directory {directory} does not exist or is not a directory",
            "pass the directory holding config.json, steering_vectors.npz and the .pkl files",
        )
    contents = {name: _read_file(directory, name) for name in LEGACY_FILES}
    sources = [
        SourceFile(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())
        for name, data in sorted(contents.items())
    ]

    parsed = parse_legacy_config(contents[LEGACY_CONFIG_FILE])
    domains = parsed.domains
    vectors = parse_steering_npz(contents[LEGACY_VECTORS_FILE], domains)

    scaler: LegacyScaler = to_legacy_scaler(
        safe_load_pickle(contents[LEGACY_SCALER_FILE], filename=LEGACY_SCALER_FILE),
        filename=LEGACY_SCALER_FILE,
        what="scaler",
    )
    router = to_legacy_logistic(
        safe_load_pickle(contents[LEGACY_ROUTER_FILE], filename=LEGACY_ROUTER_FILE),
        filename=LEGACY_ROUTER_FILE,
        what="router",
    )
    raw_probes = safe_load_pickle(contents[LEGACY_PROBES_FILE], filename=LEGACY_PROBES_FILE)
    if not isinstance(raw_probes, dict):
        raise _content_error(
            LEGACY_PROBES_FILE,
            f"probes.pkl holds a {type(raw_probes).__name__}; a dict of domain name -> "
            "LogisticRegression is required",
        )
    probes: dict[str, LegacyLogisticRegression] = {}
    for key, value in raw_probes.items():
        if not isinstance(key, str) or key not in domains:
            raise _content_error(
                LEGACY_PROBES_FILE, f"probe key {key!r} is not a domain of config.json"
            )
        probes[key] = to_legacy_logistic(value, filename=LEGACY_PROBES_FILE, what=f"probe {key!r}")
    # keep the probes in domain order
    probes = {name: probes[name] for name in domains if name in probes}

    _check_router(router, domains)
    for name, probe in probes.items():
        _check_probe(name, probe)
    _check_shapes(scaler.n_features_in, vectors, router, probes)

    return LegacyAssets(
        domains=domains,
        layer=parsed.layer,
        alpha=parsed.alpha,
        tau=parsed.tau,
        beta=parsed.beta,
        vectors=vectors,
        scaler=scaler,
        router=router,
        probes=probes,
        model_id=parsed.model_id,
        config=parsed.raw,
        extra_config=parsed.extra,
        sources=sources,
    )
