"""One error hierarchy for asa-format, with stable error codes.

Every failure the library reports is an :class:`AsaError` (or a subclass).
Each error carries a stable, documented ``code`` (``UPPER_SNAKE`` string, see
``CODES`` below and the table in ``spec/SPEC.md``), the file it concerns when
there is one, a message saying what is wrong, and a hint saying how to fix
it. Codes never change meaning once released; new codes may be added.

The validator reports :class:`Problem` records (code, file, message, hint);
``load_bundle`` raises a :class:`BundleError` that carries all problems found
and takes its ``code`` from the first one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "CODES",
    "AsaError",
    "BundleError",
    "ConversionError",
    "DecisionError",
    "DigestMismatchError",
    "LegacyFormatError",
    "ParityError",
    "Problem",
    "RuntimeCompatError",
    "SignatureError",
    "UnsafePickleError",
    "UsageError",
]


# code -> one-line summary. The spec's error-code table mirrors this dict and a
# test checks that the two agree.
CODES: dict[str, str] = {
    # generic
    "USAGE": "command-line usage error",
    "IO_ERROR": "a file could not be read or written",
    # bundle layout and paths
    "BUNDLE_NOT_FOUND": "the bundle path does not exist or is not a directory",
    "PATH_INVALID": "a manifest path is absolute, contains '..' or is not in canonical form",
    "PATH_SYMLINK": "a bundle file or directory is a symbolic link",
    "PATH_HARDLINK": "a bundle file has more than one hard link",
    "PATH_NOT_REGULAR": "a bundle entry is not a regular file",
    "FILE_MISSING": "a file listed in the manifest does not exist",
    "FILE_UNLISTED": "a file in the bundle directory is not listed in the manifest",
    "FILE_TOO_LARGE": "a file exceeds the size cap for its role",
    "FILE_SIZE_MISMATCH": "a file's size differs from the manifest",
    "FILE_HASH_MISMATCH": "a file's sha256 differs from the manifest",
    # manifest
    "MANIFEST_MISSING": "the bundle has no manifest file",
    "MANIFEST_TOO_LARGE": "the manifest exceeds the size cap",
    "MANIFEST_ENCODING": "the manifest is not valid UTF-8",
    "MANIFEST_JSON": "the manifest is not valid JSON",
    "MANIFEST_DUPLICATE_KEY": "the manifest repeats a key in one object",
    "MANIFEST_NONFINITE": "the manifest contains NaN or Infinity",
    "MANIFEST_SCHEMA": "the manifest does not match the JSON Schema",
    "FORMAT_UNKNOWN": "the manifest names another format",
    "FORMAT_VERSION_UNSUPPORTED": "the bundle's format major version is not supported",
    "MANIFEST_SEMANTIC": "a manifest value is inconsistent (duplicate domain, bad range, ...)",
    # safetensors profile
    "SAFETENSORS_HEADER": "the safetensors header is malformed",
    "SAFETENSORS_HEADER_TOO_LARGE": "the safetensors header exceeds the cap",
    "SAFETENSORS_OFFSETS": "tensor data offsets overlap, leave gaps or exceed the file",
    "SAFETENSORS_DTYPE": "a tensor has a dtype outside the profile",
    "SAFETENSORS_SHAPE": "a tensor has the wrong shape",
    "SAFETENSORS_KEYS": "tensor names are missing, unknown or duplicated",
    "SAFETENSORS_NONFINITE": "a tensor contains NaN or Infinity",
    "SAFETENSORS_METADATA": "the __metadata__ entry is outside the profile",
    "VECTOR_NOT_UNIT": "a steering vector is not unit-norm",
    # onnx profile
    "ONNX_PARSE": "an ONNX file could not be parsed",
    "ONNX_OPSET": "opset imports are outside the profile (domain, version or duplicates)",
    "ONNX_IR_VERSION": "the ONNX IR version is outside the profile",
    "ONNX_OP": "an operator is not on the profile's allowlist",
    "ONNX_EXTERNAL_DATA": "a tensor references external data",
    "ONNX_FUNCTION": "the model defines local functions",
    "ONNX_SPARSE": "the model has sparse initializers",
    "ONNX_TRAINING": "the model carries training info",
    "ONNX_SUBGRAPH": "a node has a graph-valued attribute",
    "ONNX_METADATA": "model metadata carries a forbidden key (e.g. ort_config)",
    "ONNX_IO": "graph inputs or outputs differ from the profile (names, types, shapes)",
    "ONNX_TOO_LARGE": "the graph exceeds a size cap (nodes or bytes)",
    "ONNX_SESSION": "onnxruntime refused to create a session for the graph",
    # cross-file consistency
    "HIDDEN_SIZE_MISMATCH": "hidden size differs between manifest, vectors and graphs",
    "DOMAIN_MISMATCH": "router classes or probes disagree with the domain list",
    "LAYER_OUT_OF_RANGE": "the layer index is not below the layer count",
    # trust
    "DIGEST_MISMATCH": "the bundle's root digest is not the expected one",
    "SIGNATURE_MISSING": "a signature is required but none was found",
    "SIGNATURE_INVALID": "the signature does not verify",
    "SIGNATURE_UNTRUSTED_KEY": "the signature was made by a key that is not trusted",
    "SIGNATURE_FILE_MODIFIED": "a signed file's digest does not match",
    "SIGNATURE_FILE_EXTRA": "the bundle has a file the signature does not cover",
    "SIGNATURE_FILE_MISSING": "a file covered by the signature is missing",
    "SIGNATURE_FORMAT": "the signature file is malformed",
    "SIGNATURE_KEY_INVALID": "a signing or verification key cannot be read or is not a supported ECDSA key",
    # conversion
    "LEGACY_MISSING_FILE": "a required legacy file is missing",
    "LEGACY_CONFIG": "the legacy config.json is missing keys or has bad values",
    "LEGACY_CONTENT": "legacy arrays or estimators have unexpected content or shapes",
    "PICKLE_FORBIDDEN_GLOBAL": "a pickle references a global outside the allowlist",
    "PICKLE_FORBIDDEN_OPCODE": "a pickle uses an opcode outside the allowed set",
    "PICKLE_FORBIDDEN_CALL": "a pickle calls (REDUCE/NEWOBJ/BUILD) something not allowed",
    "PICKLE_MALFORMED": "a pickle is truncated, has trailing bytes or is otherwise malformed",
    "PICKLE_PROTOCOL": "a pickle uses an unsupported protocol",
    "PICKLE_TOO_LARGE": "a pickle exceeds the size cap",
    "NPZ_INVALID": "steering_vectors.npz is malformed or uses object arrays",
    "INPUT_SHAPE": "pipeline objects have inconsistent shapes",
    "DESTINATION_EXISTS": "the destination exists and --force was not given",
    "PARITY_FAILED": "the converted bundle does not reproduce the legacy decisions",
    "EXPORT_FAILED": "a graph could not be exported to ONNX",
    # runtime
    "LAYERS_NOT_FOUND": "the decoder block list of the model could not be found",
    "LAYER_MISSING": "the bundle's layer index does not exist in the model",
    "MODEL_HIDDEN_SIZE": "the model's hidden size differs from the bundle's",
    "MODEL_TYPE_MISMATCH": "the model's type differs from the bundle's binding",
    "MODEL_ID_MISMATCH": "the model's id differs from the bundle's binding",
    "MODEL_LAYER_COUNT": "the model's layer count differs from the bundle's binding",
    "MODEL_NOT_FOUND": "the model directory does not exist or is not a model",
    "DECISION_INPUT": "decide() got an array of the wrong shape or dtype",
    "DECISION_FAILED": "evaluating the decision graphs failed",
    # format 1.1: interventions, import, export, hub
    "FORMAT_FEATURE_UNSUPPORTED": "the manifest requires a feature this reader does not implement",
    "CARD_INVALID": "the bundle's model card (README.md) is not UTF-8 text",
    "NOT_AN_ASA_BUNDLE": "the bundle has no asa intervention (router and probes) for this operation",
    "BUNDLE_HAS_INTERVENTIONS": "the bundle has interventions that this operation would ignore",
    "IMPORT_UNKNOWN_KIND": "the import source is not a recognised steering format",
    "IMPORT_INVALID": "the import source is malformed (counts, dtypes, lengths, values)",
    "IMPORT_BINDING": "the import source lacks the model binding and none was given",
    "EXPORT_UNSUPPORTED": "the bundle cannot be expressed in the export format",
    "EXPORT_LOSSY": "the export would lose information and --strict was given",
    "HUB_REFERENCE": "a hub reference is malformed or could not be resolved",
}


@dataclass(frozen=True)
class Problem:
    """One finding of the validator: stable code, file, message and fix hint."""

    code: str
    message: str
    file: str | None = None
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "file": self.file, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        text = f"[{self.code}] {where}{self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


class AsaError(Exception):
    """Base class of every error raised by asa-format."""

    default_code = "IO_ERROR"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        file: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.code = code or self.default_code
        if self.code not in CODES:  # pragma: no cover - programming error
            raise ValueError(f"unknown error code {self.code!r}")
        self.message = message
        self.file = file
        self.hint = hint
        super().__init__(str(self.problem))

    @property
    def problem(self) -> Problem:
        return Problem(code=self.code, message=self.message, file=self.file, hint=self.hint)


class UsageError(AsaError):
    default_code = "USAGE"


class BundleError(AsaError):
    """A bundle failed validation. ``problems`` holds every finding."""

    default_code = "MANIFEST_SCHEMA"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        file: str | None = None,
        hint: str | None = None,
        problems: list[Problem] | None = None,
    ) -> None:
        super().__init__(message, code=code, file=file, hint=hint)
        self.problems: list[Problem] = list(problems) if problems else [self.problem]

    @classmethod
    def from_problems(cls, problems: list[Problem]) -> BundleError:
        first = problems[0]
        message = first.message
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more problem(s))"
        return cls(message, code=first.code, file=first.file, hint=first.hint, problems=problems)


class DigestMismatchError(BundleError):
    default_code = "DIGEST_MISMATCH"


class SignatureError(BundleError):
    default_code = "SIGNATURE_INVALID"


class ConversionError(AsaError):
    default_code = "LEGACY_CONTENT"


class LegacyFormatError(ConversionError):
    default_code = "LEGACY_CONTENT"


class UnsafePickleError(ConversionError):
    """A legacy pickle was refused. ``offset`` is the byte offset of the opcode."""

    default_code = "PICKLE_FORBIDDEN_GLOBAL"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        file: str | None = None,
        hint: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.offset = offset
        super().__init__(message, code=code, file=file, hint=hint)


class ParityError(ConversionError):
    default_code = "PARITY_FAILED"


class RuntimeCompatError(AsaError):
    default_code = "MODEL_HIDDEN_SIZE"


class DecisionError(AsaError):
    default_code = "DECISION_FAILED"


def error_problem(exc: AsaError) -> Problem:
    """Return the Problem record of an error (kept for symmetry with BundleError)."""
    return exc.problem


def problems_of(exc: AsaError) -> list[Problem]:
    """All problems carried by ``exc``."""
    if isinstance(exc, BundleError):
        return list(exc.problems)
    return [exc.problem]

