"""One error hierarchy for asa-format, with stable error codes.

Every failure the library reports is an :class:`AsaError` (or a subclass).
Each error carries a stable, documented ``code``: an :data:`ErrorCode`, a
``Literal`` of ``UPPER_SNAKE`` strings that mypy checks at every call site
(summaries in ``CODES``, table in ``spec/SPEC.md``), the file it concerns when
there is one, a message saying what is wrong, and a hint saying how to fix
it. Codes never change meaning once released; new codes may be added. The
class tells the category of the code: each class lists the codes it carries
(``codes``), see :data:`ERROR_CLASSES`.

The validator reports :class:`Problem` records (code, file, message, hint);
``load_bundle`` raises a :class:`BundleError` that carries all problems found
and takes its ``code`` from the first one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeGuard, get_args

__all__ = [
    "CODES",
    "ERROR_CLASSES",
    "AsaError",
    "BundleError",
    "ConversionError",
    "DecisionError",
    "DigestMismatchError",
    "ErrorCode",
    "FitError",
    "LegacyFormatError",
    "ParityError",
    "Problem",
    "RuntimeCompatError",
    "SignatureError",
    "UnsafePickleError",
    "UsageError",
    "is_error_code",
    "problems_of",
]


# Every error code, spelled once for mypy: a misspelt or unknown ``code="..."``
# is a type error. Add a code here, in CODES (its one-line summary), in the
# CATEGORIES entry of the class that raises it, and in the spec's table.
ErrorCode = Literal[
    "USAGE",
    "EXTRA_MISSING",
    "INTERRUPTED",
    "IO_ERROR",
    "INTERNAL_ERROR",
    "INPUT_NOT_REGULAR",
    "INPUT_TOO_LARGE",
    "BUNDLE_NOT_FOUND",
    "PATH_INVALID",
    "PATH_SYMLINK",
    "PATH_HARDLINK",
    "PATH_NOT_REGULAR",
    "FILE_MISSING",
    "FILE_UNLISTED",
    "FILE_TOO_LARGE",
    "FILE_SIZE_MISMATCH",
    "FILE_HASH_MISMATCH",
    "MANIFEST_MISSING",
    "MANIFEST_TOO_LARGE",
    "MANIFEST_ENCODING",
    "MANIFEST_JSON",
    "MANIFEST_DUPLICATE_KEY",
    "MANIFEST_NONFINITE",
    "MANIFEST_SCHEMA",
    "FORMAT_UNKNOWN",
    "FORMAT_VERSION_UNSUPPORTED",
    "MANIFEST_SEMANTIC",
    "SAFETENSORS_HEADER",
    "SAFETENSORS_HEADER_TOO_LARGE",
    "SAFETENSORS_OFFSETS",
    "SAFETENSORS_DTYPE",
    "SAFETENSORS_SHAPE",
    "SAFETENSORS_KEYS",
    "SAFETENSORS_NONFINITE",
    "SAFETENSORS_METADATA",
    "VECTOR_NOT_UNIT",
    "ONNX_PARSE",
    "ONNX_OPSET",
    "ONNX_IR_VERSION",
    "ONNX_OP",
    "ONNX_EXTERNAL_DATA",
    "ONNX_FUNCTION",
    "ONNX_SPARSE",
    "ONNX_TRAINING",
    "ONNX_SUBGRAPH",
    "ONNX_METADATA",
    "ONNX_IO",
    "ONNX_TOO_LARGE",
    "ONNX_SESSION",
    "ONNX_COST",
    "ONNX_SHAPE",
    "HIDDEN_SIZE_MISMATCH",
    "DOMAIN_MISMATCH",
    "LAYER_OUT_OF_RANGE",
    "DIGEST_MISMATCH",
    "SIGNATURE_MISSING",
    "SIGNATURE_INVALID",
    "SIGNATURE_UNTRUSTED_KEY",
    "SIGNATURE_FILE_MODIFIED",
    "SIGNATURE_FILE_EXTRA",
    "SIGNATURE_FILE_MISSING",
    "SIGNATURE_FORMAT",
    "SIGNATURE_KEY_INVALID",
    "SIGNATURE_EXISTS",
    "SIGNATURE_BUNDLE_INVALID",
    "LEGACY_MISSING_FILE",
    "LEGACY_CONFIG",
    "LEGACY_CONTENT",
    "PICKLE_FORBIDDEN_GLOBAL",
    "PICKLE_FORBIDDEN_OPCODE",
    "PICKLE_FORBIDDEN_CALL",
    "PICKLE_MALFORMED",
    "PICKLE_PROTOCOL",
    "PICKLE_TOO_LARGE",
    "NPZ_INVALID",
    "INPUT_SHAPE",
    "DESTINATION_EXISTS",
    "DESTINATION_NOT_BUNDLE",
    "DESTINATION_IS_SOURCE",
    "DESTINATION_IN_SOURCE",
    "DESTINATION_WRONG_KIND",
    "SOURCE_NOT_FOUND",
    "PARITY_FAILED",
    "EXPORT_FAILED",
    "LAYERS_NOT_FOUND",
    "LAYER_MISSING",
    "MODEL_HIDDEN_SIZE",
    "MODEL_TYPE_MISMATCH",
    "MODEL_ID_MISMATCH",
    "MODEL_LAYER_COUNT",
    "MODEL_NOT_FOUND",
    "DECISION_INPUT",
    "DECISION_FAILED",
    "PASS_UNCLASSIFIED",
    "SELF_TEST_FAILED",
    "BLOCK_OUTPUT_LAYOUT",
    "FORMAT_FEATURE_UNSUPPORTED",
    "CARD_INVALID",
    "NOT_AN_ASA_BUNDLE",
    "BUNDLE_HAS_INTERVENTIONS",
    "IMPORT_UNKNOWN_KIND",
    "IMPORT_INVALID",
    "IMPORT_BINDING",
    "EXPORT_UNSUPPORTED",
    "EXPORT_LOSSY",
    "VALUE_OVERFLOW",
    "HUB_REFERENCE",
    "FIT_DATA_INVALID",
    "FIT_SPLIT_MISSING",
    "FIT_DOMAIN_ONE_LABEL",
    "FIT_TOO_FEW_DOMAINS",
    "FIT_EMPTY_PROMPT",
    "FIT_NO_CHAT_TEMPLATE",
    "FIT_DTYPE_UNSUPPORTED",
    "SERVING_CONFIG",
    "SERVING_EAGER_REQUIRED",
    "SERVING_BUNDLE_UNKNOWN",
]


# code -> one-line summary. The spec's error-code table mirrors this dict and a
# test checks that the two agree.
CODES: dict[ErrorCode, str] = {
    # generic
    "USAGE": "command-line usage error",
    "EXTRA_MISSING": "the command needs an optional extra (asa-format[convert], [runtime], [interop] or [hub]) that is not installed",
    "INTERRUPTED": "the command was interrupted (SIGINT or SIGTERM); nothing was left half-written",
    "IO_ERROR": "a file could not be read or written",
    "INTERNAL_ERROR": "an unexpected error in asa-format itself (a bug); the message names it",
    "INPUT_NOT_REGULAR": "an input path is not a regular file (a directory, FIFO, device or socket)",
    "INPUT_TOO_LARGE": "an input file exceeds the size cap for its role",
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
    "ONNX_COST": "the graph exceeds a static cost bound (inputs per node, parameters, work or memory per row)",
    "ONNX_SHAPE": "a value's shape cannot be derived statically from the graph input",
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
    "SIGNATURE_KEY_INVALID": (
        "a signing or verification key cannot be read or is not a supported ECDSA key"
    ),
    "SIGNATURE_EXISTS": "the signature file exists and --force was not given",
    "SIGNATURE_BUNDLE_INVALID": "the bundle fails its own checks (files against the manifest, the manifest against the schema, nothing unlisted): it is not signed, and no signature makes it trusted",
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
    "DESTINATION_NOT_BUNDLE": "the destination exists and is not an asa bundle that --force may replace",
    "DESTINATION_IS_SOURCE": "the destination is the source directory or contains it",
    "DESTINATION_IN_SOURCE": "the destination lies inside the bundle being read",
    "DESTINATION_WRONG_KIND": "the destination exists and is not of the kind the command writes (a GGUF control vector, a signature file); --force does not replace it",
    "SOURCE_NOT_FOUND": "an input file named on the command line does not exist",
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
    "PASS_UNCLASSIFIED": "a forward pass could not be classified as prefill or decode",
    "SELF_TEST_FAILED": "the attach self-test found steering that differs from the policy",
    "BLOCK_OUTPUT_LAYOUT": "the steered block's output is not one [batch, sequence, hidden] hidden state",
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
    "VALUE_OVERFLOW": "a coefficient (or alpha) times a vector is not finite in the dtype it is written or applied in",
    "HUB_REFERENCE": "a hub reference is malformed or could not be resolved",
    # fitting (asa fit)
    "FIT_DATA_INVALID": "the fitting data is not readable or a row is malformed (fields, labels, ids, domains)",
    "FIT_SPLIT_MISSING": "a split the fitting protocol needs is missing from the data",
    "FIT_DOMAIN_ONE_LABEL": "a domain (or a whole split) has rows of only one label where the fitting protocol needs both",
    "FIT_TOO_FEW_DOMAINS": "the data has fewer than 2 domains",
    "FIT_EMPTY_PROMPT": "an instruction or prompt of the data is empty",
    "FIT_NO_CHAT_TEMPLATE": "a system prompt was given but the model's tokenizer has no chat template",
    "FIT_DTYPE_UNSUPPORTED": "the model cannot run in the requested dtype (an operation fails or hidden states are not finite)",
    # serving (the vLLM plugin)
    "SERVING_CONFIG": "the serving configuration (ASA_VLLM_BUNDLES, trusted keys, engine settings) is invalid or unsupported",
    "SERVING_EAGER_REQUIRED": "the serving engine would compile or capture the steered blocks; it must run in eager mode",
    "SERVING_BUNDLE_UNKNOWN": "a request names a bundle the server did not load",
}


def _codes(*names: ErrorCode) -> frozenset[ErrorCode]:
    return frozenset(names)


# The rule: the class tells the category. Each class lists in ``codes`` the
# codes it may carry (IO_ERROR, a file that cannot be read or written, goes
# with any class); ``tests/test_error_codes.py`` checks every ``code="..."``
# of the source tree against this list. A class has a ``default_code`` only
# where it carries exactly one code.
_BUNDLE_CODES = _codes(
    "BUNDLE_NOT_FOUND",
    "PATH_INVALID",
    "PATH_SYMLINK",
    "PATH_HARDLINK",
    "PATH_NOT_REGULAR",
    "FILE_MISSING",
    "FILE_UNLISTED",
    "FILE_TOO_LARGE",
    "FILE_SIZE_MISMATCH",
    "FILE_HASH_MISMATCH",
    "MANIFEST_MISSING",
    "MANIFEST_TOO_LARGE",
    "MANIFEST_ENCODING",
    "MANIFEST_JSON",
    "MANIFEST_DUPLICATE_KEY",
    "MANIFEST_NONFINITE",
    "MANIFEST_SCHEMA",
    "FORMAT_UNKNOWN",
    "FORMAT_VERSION_UNSUPPORTED",
    "MANIFEST_SEMANTIC",
    "SAFETENSORS_HEADER",
    "SAFETENSORS_HEADER_TOO_LARGE",
    "SAFETENSORS_OFFSETS",
    "SAFETENSORS_DTYPE",
    "SAFETENSORS_SHAPE",
    "SAFETENSORS_KEYS",
    "SAFETENSORS_NONFINITE",
    "SAFETENSORS_METADATA",
    "VECTOR_NOT_UNIT",
    "ONNX_PARSE",
    "ONNX_OPSET",
    "ONNX_IR_VERSION",
    "ONNX_OP",
    "ONNX_EXTERNAL_DATA",
    "ONNX_FUNCTION",
    "ONNX_SPARSE",
    "ONNX_TRAINING",
    "ONNX_SUBGRAPH",
    "ONNX_METADATA",
    "ONNX_IO",
    "ONNX_TOO_LARGE",
    "ONNX_SESSION",
    "ONNX_COST",
    "ONNX_SHAPE",
    "HIDDEN_SIZE_MISMATCH",
    "DOMAIN_MISMATCH",
    "LAYER_OUT_OF_RANGE",
    # format 1.1
    "FORMAT_FEATURE_UNSUPPORTED",
    "CARD_INVALID",
    "NOT_AN_ASA_BUNDLE",
    "BUNDLE_HAS_INTERVENTIONS",
    "HUB_REFERENCE",
)


@dataclass(frozen=True)
class Problem:
    """One finding of the validator: stable code, file, message and fix hint."""

    code: ErrorCode
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
    """Base class of every error raised by asa-format; raised itself only for the
    input-file codes (IO_ERROR, INPUT_NOT_REGULAR, INPUT_TOO_LARGE), which any
    command may report for a path it was given."""

    codes: ClassVar[frozenset[ErrorCode]] = _codes(
        "IO_ERROR", "INTERNAL_ERROR", "INPUT_NOT_REGULAR", "INPUT_TOO_LARGE"
    )
    default_code: ClassVar[ErrorCode | None] = None

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        file: str | None = None,
        hint: str | None = None,
    ) -> None:
        chosen = code if code is not None else self.default_code
        if chosen is None:  # pragma: no cover - programming error
            raise TypeError(f"{type(self).__name__} needs an explicit error code")
        if chosen not in CODES:  # pragma: no cover - programming error
            raise ValueError(f"unknown error code {chosen!r}")
        self.code: ErrorCode = chosen
        self.message = message
        self.file = file
        self.hint = hint
        super().__init__(str(self.problem))

    @property
    def problem(self) -> Problem:
        return Problem(code=self.code, message=self.message, file=self.file, hint=self.hint)


class UsageError(AsaError):
    """The caller asked for something impossible (bad option, existing destination)."""

    codes = _codes(
        "USAGE",
        "DESTINATION_EXISTS",
        "DESTINATION_NOT_BUNDLE",
        "DESTINATION_IS_SOURCE",
        "DESTINATION_IN_SOURCE",
        "DESTINATION_WRONG_KIND",
        "SOURCE_NOT_FOUND",
        "SIGNATURE_EXISTS",
        "EXTRA_MISSING",
        "INTERRUPTED",
        "SERVING_CONFIG",
        "SERVING_EAGER_REQUIRED",
        "SERVING_BUNDLE_UNKNOWN",
    )
    default_code = "USAGE"


class BundleError(AsaError):
    """A bundle failed validation. ``problems`` holds every finding."""

    codes = _BUNDLE_CODES

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
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
    """The bundle is not the one its root digest was pinned to."""

    codes = _codes("DIGEST_MISMATCH")
    default_code = "DIGEST_MISMATCH"


class SignatureError(BundleError):
    """A signature is missing, malformed, untrusted or does not cover the bundle."""

    codes = _codes(
        "SIGNATURE_MISSING",
        "SIGNATURE_INVALID",
        "SIGNATURE_UNTRUSTED_KEY",
        "SIGNATURE_FILE_MODIFIED",
        "SIGNATURE_FILE_EXTRA",
        "SIGNATURE_FILE_MISSING",
        "SIGNATURE_FORMAT",
        "SIGNATURE_KEY_INVALID",
        "SIGNATURE_BUNDLE_INVALID",
    )


class ConversionError(AsaError):
    """Source objects cannot be turned into a bundle (a legacy bundle, in-memory
    estimators, an imported steering file), or a bundle into another format."""

    codes = _codes(
        "INPUT_SHAPE",
        "EXPORT_FAILED",
        "DOMAIN_MISMATCH",
        "HIDDEN_SIZE_MISMATCH",
        "IMPORT_UNKNOWN_KIND",
        "IMPORT_INVALID",
        "IMPORT_BINDING",
        "EXPORT_UNSUPPORTED",
        "EXPORT_LOSSY",
        "VALUE_OVERFLOW",
    )


class LegacyFormatError(ConversionError):
    """A legacy ``asa_assets/`` directory is incomplete or holds unexpected content."""

    codes = _codes("LEGACY_MISSING_FILE", "LEGACY_CONFIG", "LEGACY_CONTENT", "NPZ_INVALID")


class UnsafePickleError(ConversionError):
    """A legacy pickle was refused. ``offset`` is the byte offset of the opcode."""

    codes = _codes(
        "PICKLE_FORBIDDEN_GLOBAL",
        "PICKLE_FORBIDDEN_OPCODE",
        "PICKLE_FORBIDDEN_CALL",
        "PICKLE_MALFORMED",
        "PICKLE_PROTOCOL",
        "PICKLE_TOO_LARGE",
    )

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        file: str | None = None,
        hint: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.offset = offset
        super().__init__(message, code=code, file=file, hint=hint)


class ParityError(ConversionError):
    """The converted bundle does not reproduce the source's decisions."""

    codes = _codes("PARITY_FAILED")
    default_code = "PARITY_FAILED"


class FitError(ConversionError):
    """The data or the model given to ``asa fit`` cannot be fitted as asked."""

    codes = _codes(
        "FIT_DATA_INVALID",
        "FIT_SPLIT_MISSING",
        "FIT_DOMAIN_ONE_LABEL",
        "FIT_TOO_FEW_DOMAINS",
        "FIT_EMPTY_PROMPT",
        "FIT_NO_CHAT_TEMPLATE",
        "FIT_DTYPE_UNSUPPORTED",
    )


class RuntimeCompatError(AsaError):
    """The bundle does not fit the model it is attached to."""

    codes = _codes(
        "LAYERS_NOT_FOUND",
        "LAYER_MISSING",
        "MODEL_HIDDEN_SIZE",
        "MODEL_TYPE_MISMATCH",
        "MODEL_ID_MISMATCH",
        "MODEL_LAYER_COUNT",
        "MODEL_NOT_FOUND",
        "SELF_TEST_FAILED",
        "BLOCK_OUTPUT_LAYOUT",
        "VALUE_OVERFLOW",
    )


class DecisionError(AsaError):
    """``decide()`` got unusable input, evaluating the graphs failed, or a pass the
    runtime was asked to refuse could not be classified."""

    codes = _codes("DECISION_INPUT", "DECISION_FAILED", "PASS_UNCLASSIFIED")


ERROR_CLASSES: tuple[type[AsaError], ...] = (
    AsaError,
    UsageError,
    BundleError,
    DigestMismatchError,
    SignatureError,
    ConversionError,
    LegacyFormatError,
    UnsafePickleError,
    ParityError,
    FitError,
    RuntimeCompatError,
    DecisionError,
)


def is_error_code(value: str) -> TypeGuard[ErrorCode]:
    """Whether ``value`` is one of the stable error codes."""
    return value in _ALL_CODES


_ALL_CODES: frozenset[str] = frozenset(get_args(ErrorCode))


def problems_of(exc: AsaError) -> list[Problem]:
    """All problems carried by ``exc``."""
    if isinstance(exc, BundleError):
        return list(exc.problems)
    return [exc.problem]
