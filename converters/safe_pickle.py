"""Read scikit-learn / numpy pickles as data, without executing them.

A pickle is a small stack-machine program: the standard unpickler imports whatever
globals the file names and calls them. This module never does that. It walks
the opcodes itself, with its own stack and memo, and accepts only what a
fitted ``StandardScaler``, a ``LogisticRegression`` or a ``dict`` of those
needs:

* globals come from an exact ``(module, name)`` table (:data:`ALLOWED_GLOBALS`);
  nothing is imported and no dotted name is resolved;
* every global maps to an inert handler: estimators become
  :class:`EstimatorState` stand-ins holding a state dict, arrays are built by
  ``np.frombuffer(...).reshape(...).copy()`` after checking dtype, shape and
  byte length; no library code ever sees the file's content;
* ``REDUCE``, ``NEWOBJ`` and ``BUILD`` each have their own allowance, with
  exact argument checks; ``BUILD`` is accepted only on estimator, array and
  dtype stand-ins, and estimator state keys come from a per-class list;
* opcodes such pickles never need are refused, as are protocols below 2,
  trailing bytes after ``STOP`` and files over :data:`MAX_PICKLE_BYTES`.

Anything refused raises :class:`~asa_format.errors.UnsafePickleError` with the
byte offset of the opcode. :func:`to_legacy_scaler` and
:func:`to_legacy_logistic` turn stand-ins into the typed records of
:mod:`asa_format.converters.legacy_model`.
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asa_format.converters.legacy_model import LegacyLogisticRegression, LegacyScaler
from asa_format.errors import LegacyFormatError, UnsafePickleError

__all__ = [
    "ALLOWED_GLOBALS",
    "ESTIMATOR_STATE_KEYS",
    "MAX_ARRAY_ELEMENTS",
    "MAX_PICKLE_BYTES",
    "EstimatorState",
    "safe_load_pickle",
    "to_legacy_logistic",
    "to_legacy_scaler",
]

MAX_PICKLE_BYTES = 256 << 20  # 256 MiB per pickle file
MAX_ARRAY_ELEMENTS = 1 << 28  # elements of one array
MAX_ARRAY_NDIM = 4
MAX_STACK_DEPTH = 1 << 16  # items on the stack plus open marks
MAX_MEMO_ENTRIES = 1 << 20
MAX_NESTING = 64  # container nesting depth of the result
MAX_UNICODE_ITEMSIZE = 1 << 12  # characters of a fixed-width numpy string dtype

HINT = (
    "re-export the estimator with a supported scikit-learn (1.3 to 1.9) and "
    "pickle protocol 2 to 5; asa-convert never executes pickled code"
)

SCALER = "StandardScaler"
LOGISTIC = "LogisticRegression"

# Every key a fitted estimator of scikit-learn 1.3 .. 1.9 pickles in its state.
ESTIMATOR_STATE_KEYS: dict[str, frozenset[str]] = {
    SCALER: frozenset(
        {
            "with_mean",
            "with_std",
            "copy",
            "n_features_in_",
            "feature_names_in_",
            "n_samples_seen_",
            "mean_",
            "var_",
            "scale_",
            "_sklearn_version",
            "_sklearn_output_config",
        }
    ),
    LOGISTIC: frozenset(
        {
            "penalty",
            "dual",
            "tol",
            "C",
            "fit_intercept",
            "intercept_scaling",
            "class_weight",
            "random_state",
            "solver",
            "max_iter",
            "multi_class",
            "verbose",
            "warm_start",
            "n_jobs",
            "l1_ratio",
            "n_features_in_",
            "feature_names_in_",
            "classes_",
            "n_iter_",
            "coef_",
            "intercept_",
            "_sklearn_version",
            "_sklearn_output_config",
        }
    ),
}


@dataclass
class EstimatorState:
    """Inert stand-in for a pickled estimator: its class and its state dict."""

    class_name: str
    state: dict[str, Any] = field(default_factory=dict)
    built: bool = field(default=False, repr=False, compare=False)


# --------------------------------------------------------------------------
# The global allowlist: exact (module, name) -> kind of inert handler.
# --------------------------------------------------------------------------

_G_RECONSTRUCT = "reconstruct"
_G_NDARRAY = "ndarray"
_G_DTYPE = "dtype"
_G_SCALAR = "scalar"
_G_FROMBUFFER = "frombuffer"
_G_ENCODE = "codecs_encode"
_G_BYTES = "bytes"
_G_SCALER = "estimator:" + SCALER
_G_LOGISTIC = "estimator:" + LOGISTIC

ALLOWED_GLOBALS: dict[tuple[str, str], str] = {
    ("numpy.core.multiarray", "_reconstruct"): _G_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _G_RECONSTRUCT,
    ("numpy.core.multiarray", "scalar"): _G_SCALAR,
    ("numpy._core.multiarray", "scalar"): _G_SCALAR,
    ("numpy.core.numeric", "_frombuffer"): _G_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _G_FROMBUFFER,
    ("numpy", "ndarray"): _G_NDARRAY,
    ("numpy", "dtype"): _G_DTYPE,
    # protocol 2 spells non-empty bytes as _codecs.encode(text, "latin1") and
    # empty bytes as bytes() (``__builtin__`` with fix_imports).
    ("_codecs", "encode"): _G_ENCODE,
    ("builtins", "bytes"): _G_BYTES,
    ("__builtin__", "bytes"): _G_BYTES,
    ("sklearn.preprocessing._data", "StandardScaler"): _G_SCALER,
    ("sklearn.linear_model._logistic", "LogisticRegression"): _G_LOGISTIC,
}


@dataclass(frozen=True)
class _Global:
    module: str
    name: str
    kind: str

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"


class _DtypeStandIn:
    """A ``numpy.dtype(spec, False, True)`` call, completed by BUILD."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.dtype: np.dtype[Any] | None = None  # set by BUILD (or default)

    def resolve(self) -> np.dtype[Any]:
        if self.dtype is None:
            self.dtype = np.dtype(self.spec)
        return self.dtype


class _ArrayStandIn:
    """A ``_reconstruct(ndarray, (0,), b'b')`` call, completed by BUILD."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None


class _Mark:
    pass


# dtype specs numpy pickles for the arrays an estimator holds
_DTYPE_SPEC = re.compile(r"(f4|f8|i4|i8|b1|O8|O4|U[1-9][0-9]{0,4})")
_NUMERIC_SPECS = frozenset({"f4", "f8", "i4", "i8"})


class _Reader:
    def __init__(self, data: bytes, filename: str) -> None:
        self.data = data
        self.filename = filename
        self.pos = 0
        self.op_offset = 0
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.protocol = 0

    # ---- errors -----------------------------------------------------------
    def fail(self, code: str, what: str, offset: int | None = None) -> UnsafePickleError:
        off = self.op_offset if offset is None else offset
        return UnsafePickleError(
            f"{what} at byte offset {off}",
            code=code,
            file=self.filename,
            hint=HINT,
            offset=off,
        )

    def malformed(self, what: str) -> UnsafePickleError:
        return self.fail("PICKLE_MALFORMED", what)

    def forbidden_call(self, what: str) -> UnsafePickleError:
        return self.fail("PICKLE_FORBIDDEN_CALL", what)

    # ---- raw reads ----------------------------------------------------------
    def read(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.malformed("pickle is truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def read_line(self) -> bytes:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise self.malformed("pickle is truncated (missing newline)")
        line = self.data[self.pos : end]
        self.pos = end + 1
        return line

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.read(size))[0]

    def decode_utf8(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.malformed("string is not valid UTF-8") from exc

    # ---- stack helpers ------------------------------------------------------------
    def push(self, value: Any) -> None:
        if len(self.stack) + len(self.metastack) >= MAX_STACK_DEPTH:
            raise self.fail("PICKLE_TOO_LARGE", "pickle stack grows beyond the cap")
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack:
            raise self.malformed("stack underflow")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            raise self.malformed("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            raise self.malformed("no MARK on the stack")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def memo_put(self, index: int) -> None:
        if index not in self.memo and len(self.memo) >= MAX_MEMO_ENTRIES:
            raise self.fail("PICKLE_TOO_LARGE", "pickle memo grows beyond the cap")
        self.memo[index] = self.top()

    def memo_get(self, index: int) -> None:
        if index not in self.memo:
            raise self.malformed(f"memo entry {index} is not defined")
        self.push(self.memo[index])

    # ---- main loop ---------------------------------------------------------------
    def run(self) -> Any:
        if not self.data:
            raise self.malformed("pickle is empty")
        if self.data[0] != 0x80:
            raise self.fail(
                "PICKLE_PROTOCOL",
                "pickle has no PROTO opcode (protocol 0 or 1); protocols 2 to 5 are supported",
                offset=0,
            )
        while True:
            self.op_offset = self.pos
            code = self.read(1)
            handler = _HANDLERS.get(code)
            if handler is None:
                raise self.fail("PICKLE_FORBIDDEN_OPCODE", f"opcode {_opname(code)} is not allowed")
            if handler is _STOP:
                break
            min_proto = _OPCODE_PROTO.get(code, 0)
            if min_proto > self.protocol and code != b"\x80":
                raise self.malformed(
                    f"opcode {_opname(code)} needs protocol {min_proto} but the pickle "
                    f"declares protocol {self.protocol}"
                )
            handler(self)
        if self.pos != len(self.data):
            raise self.fail(
                "PICKLE_MALFORMED",
                f"{len(self.data) - self.pos} trailing byte(s) after STOP",
                offset=self.pos,
            )
        if self.metastack or len(self.stack) != 1:
            raise self.malformed("STOP with an unbalanced stack")
        result = self.stack.pop()
        return _Resolver(self).resolve(result, 0)

    # ---- opcodes: framing, protocol -----------------------------------------------
    def op_proto(self) -> None:
        version = self.read(1)[0]
        if self.op_offset != 0:
            raise self.malformed("PROTO opcode is not the first opcode")
        if not 2 <= version <= 5:
            raise self.fail(
                "PICKLE_PROTOCOL", f"pickle protocol {version} is not supported (2 to 5)"
            )
        self.protocol = version

    def op_frame(self) -> None:
        size = self.unpack("<Q")
        if size > len(self.data) - self.pos:
            raise self.malformed("FRAME extends beyond the end of the pickle")

    # ---- opcodes: scalars ----------------------------------------------------------
    def op_none(self) -> None:
        self.push(None)

    def op_true(self) -> None:
        self.push(True)

    def op_false(self) -> None:
        self.push(False)

    def op_binint(self) -> None:
        self.push(self.unpack("<i"))

    def op_binint1(self) -> None:
        self.push(self.read(1)[0])

    def op_binint2(self) -> None:
        self.push(self.unpack("<H"))

    def op_long1(self) -> None:
        n = self.read(1)[0]
        self.push(int.from_bytes(self.read(n), "little", signed=True))

    def op_binfloat(self) -> None:
        self.push(self.unpack(">d"))

    def op_binunicode(self) -> None:
        self.push(self.decode_utf8(self.read(self.unpack("<I"))))

    def op_short_binunicode(self) -> None:
        self.push(self.decode_utf8(self.read(self.read(1)[0])))

    def op_binunicode8(self) -> None:
        self.push(self.decode_utf8(self.read(self.unpack("<Q"))))

    def op_short_binbytes(self) -> None:
        self.push(bytes(self.read(self.read(1)[0])))

    def op_binbytes(self) -> None:
        self.push(bytes(self.read(self.unpack("<I"))))

    def op_binbytes8(self) -> None:
        self.push(bytes(self.read(self.unpack("<Q"))))

    def op_bytearray8(self) -> None:
        # in-band protocol-5 buffer of numpy's _frombuffer; kept as plain bytes
        self.push(bytes(self.read(self.unpack("<Q"))))

    # ---- opcodes: containers ---------------------------------------------------------
    def op_mark(self) -> None:
        if len(self.stack) + len(self.metastack) >= MAX_STACK_DEPTH:
            raise self.fail("PICKLE_TOO_LARGE", "pickle stack grows beyond the cap")
        self.metastack.append(self.stack)
        self.stack = []

    def op_empty_tuple(self) -> None:
        self.push(())

    def op_tuple(self) -> None:
        self.push(tuple(self.pop_mark()))

    def op_tuple1(self) -> None:
        a = self.pop()
        self.push((a,))

    def op_tuple2(self) -> None:
        b = self.pop()
        a = self.pop()
        self.push((a, b))

    def op_tuple3(self) -> None:
        c = self.pop()
        b = self.pop()
        a = self.pop()
        self.push((a, b, c))

    def op_empty_list(self) -> None:
        self.push([])

    def op_append(self) -> None:
        value = self.pop()
        target = self.top()
        if type(target) is not list:
            raise self.forbidden_call("APPEND on something that is not a list")
        target.append(value)

    def op_appends(self) -> None:
        items = self.pop_mark()
        target = self.top()
        if type(target) is not list:
            raise self.forbidden_call("APPENDS on something that is not a list")
        target.extend(items)

    def op_empty_dict(self) -> None:
        self.push({})

    def _set_items(self, target: Any, items: list[Any], opname: str) -> None:
        if type(target) is not dict:
            raise self.forbidden_call(f"{opname} on something that is not a dict")
        if len(items) % 2:
            raise self.malformed(f"{opname} with an odd number of items")
        for i in range(0, len(items), 2):
            key = items[i]
            if type(key) not in (str, int, float, bool, bytes) and key is not None:
                raise self.forbidden_call(f"{opname} with a dict key of type {type(key).__name__}")
            target[key] = items[i + 1]

    def op_setitem(self) -> None:
        value = self.pop()
        key = self.pop()
        self._set_items(self.top(), [key, value], "SETITEM")

    def op_setitems(self) -> None:
        items = self.pop_mark()
        self._set_items(self.top(), items, "SETITEMS")

    # ---- opcodes: memo ------------------------------------------------------------------
    def op_binput(self) -> None:
        self.memo_put(self.read(1)[0])

    def op_long_binput(self) -> None:
        self.memo_put(self.unpack("<I"))

    def op_memoize(self) -> None:
        self.memo_put(len(self.memo))

    def op_binget(self) -> None:
        self.memo_get(self.read(1)[0])

    def op_long_binget(self) -> None:
        self.memo_get(self.unpack("<I"))

    # ---- opcodes: globals -------------------------------------------------------------
    def _global(self, module: str, name: str) -> None:
        kind = ALLOWED_GLOBALS.get((module, name))
        if kind is None:
            raise self.fail(
                "PICKLE_FORBIDDEN_GLOBAL",
                f"global '{module}.{name}' is not on the allowlist",
            )
        self.push(_Global(module, name, kind))

    def op_global(self) -> None:
        module = self.decode_utf8(self.read_line())
        name = self.decode_utf8(self.read_line())
        self._global(module, name)

    def op_stack_global(self) -> None:
        name = self.pop()
        module = self.pop()
        if type(module) is not str or type(name) is not str:
            raise self.fail(
                "PICKLE_FORBIDDEN_OPCODE",
                "opcode STACK_GLOBAL with operands that are not plain strings "
                f"({type(module).__name__}, {type(name).__name__})",
            )
        self._global(module, name)

    # ---- opcodes: calls -----------------------------------------------------------------
    def op_reduce(self) -> None:
        args = self.pop()
        func = self.pop()
        if not isinstance(func, _Global):
            raise self.forbidden_call(f"REDUCE of a {_describe(func)}")
        if type(args) is not tuple:
            raise self.forbidden_call(f"REDUCE of '{func.dotted}' with non-tuple arguments")
        handler = _REDUCERS.get(func.kind)
        if handler is None:
            raise self.forbidden_call(f"REDUCE (call) of '{func.dotted}' is not allowed")
        self.push(handler(self, func, args))

    def op_newobj(self) -> None:
        args = self.pop()
        cls = self.pop()
        if not isinstance(cls, _Global) or not cls.kind.startswith("estimator:"):
            raise self.forbidden_call(f"NEWOBJ of {_describe(cls)} is not allowed")
        if args != () or type(args) is not tuple:
            raise self.forbidden_call(f"NEWOBJ of '{cls.dotted}' with arguments")
        self.push(EstimatorState(cls.kind.split(":", 1)[1]))

    def op_build(self) -> None:
        state = self.pop()
        target = self.top()
        if isinstance(target, EstimatorState):
            self._build_estimator(target, state)
        elif isinstance(target, _ArrayStandIn):
            self._build_array(target, state)
        elif isinstance(target, _DtypeStandIn):
            self._build_dtype(target, state)
        else:
            raise self.forbidden_call(f"BUILD (set state) on {_describe(target)} is not allowed")

    # ---- call handlers ----------------------------------------------------------------------
    def _call_reconstruct(self, func: _Global, args: tuple[Any, ...]) -> Any:
        if not (
            len(args) == 3
            and isinstance(args[0], _Global)
            and args[0].kind == _G_NDARRAY
            and type(args[1]) is tuple
            and args[1] == (0,)
            and type(args[1][0]) is int
            and type(args[2]) is bytes
            and args[2] == b"b"
        ):
            raise self.forbidden_call(
                f"call of '{func.dotted}' with arguments other than (numpy.ndarray, (0,), b'b')"
            )
        return _ArrayStandIn()

    def _call_dtype(self, func: _Global, args: tuple[Any, ...]) -> Any:
        if not (len(args) == 3 and type(args[0]) is str and args[1] is False and args[2] is True):
            raise self.forbidden_call(f"call of '{func.dotted}' with unexpected arguments")
        spec = args[0]
        if not _DTYPE_SPEC.fullmatch(spec) or (
            spec[0] == "U" and int(spec[1:]) > MAX_UNICODE_ITEMSIZE
        ):
            raise self.forbidden_call(f"dtype {spec!r} is not allowed")
        return _DtypeStandIn(spec)

    def _call_scalar(self, func: _Global, args: tuple[Any, ...]) -> Any:
        if len(args) != 2 or not isinstance(args[0], _DtypeStandIn) or type(args[1]) is not bytes:
            raise self.forbidden_call(f"call of '{func.dotted}' with unexpected arguments")
        dtype = args[0].resolve()
        if dtype.hasobject:
            raise self.forbidden_call(f"call of '{func.dotted}' with an object dtype")
        if len(args[1]) != dtype.itemsize:
            raise self.malformed(
                f"numpy scalar of dtype {dtype.str} has {len(args[1])} bytes, "
                f"expected {dtype.itemsize}"
            )
        value = np.frombuffer(args[1], dtype=dtype)[0]
        if dtype.kind == "U":
            return str(value)
        return value.astype(dtype.newbyteorder("="))[()]

    def _call_frombuffer(self, func: _Global, args: tuple[Any, ...]) -> Any:
        if not (
            len(args) == 4
            and type(args[0]) is bytes
            and isinstance(args[1], _DtypeStandIn)
            and type(args[3]) is str
            and args[3] in ("C", "F")
        ):
            raise self.forbidden_call(f"call of '{func.dotted}' with unexpected arguments")
        dtype = args[1].resolve()
        if dtype.hasobject:
            raise self.forbidden_call(f"call of '{func.dotted}' with an object dtype")
        return self._make_array(args[0], dtype, args[2], fortran=args[3] == "F")

    def _call_encode(self, func: _Global, args: tuple[Any, ...]) -> Any:
        if not (
            len(args) == 2 and type(args[0]) is str and type(args[1]) is str and args[1] == "latin1"
        ):
            raise self.forbidden_call(
                f"call of '{func.dotted}' with arguments other than (str, 'latin1')"
            )
        try:
            return args[0].encode("latin1")
        except UnicodeEncodeError as exc:
            raise self.malformed("latin1 text holds characters above U+00FF") from exc

    def _call_bytes(self, func: _Global, args: tuple[Any, ...]) -> Any:
        if args != ():
            raise self.forbidden_call(f"call of '{func.dotted}' with arguments")
        return b""

    # ---- BUILD handlers ---------------------------------------------------------------------
    def _build_estimator(self, target: EstimatorState, state: Any) -> None:
        if target.built:
            raise self.forbidden_call(f"second BUILD on a {target.class_name}")
        if type(state) is not dict:
            raise self.forbidden_call(
                f"BUILD of a {target.class_name} with a {type(state).__name__} state "
                "(a dict is expected)"
            )
        allowed = ESTIMATOR_STATE_KEYS[target.class_name]
        for key in state:
            if type(key) is not str or key not in allowed:
                raise self.forbidden_call(
                    f"{target.class_name} state key {key!r} is not on the allowlist"
                )
        target.state = dict(state)
        target.built = True

    def _build_dtype(self, target: _DtypeStandIn, state: Any) -> None:
        if target.dtype is not None:
            raise self.forbidden_call("second BUILD on a numpy dtype")
        spec = target.spec
        ok = (
            type(state) is tuple
            and len(state) == 8
            and state[0] == 3
            and type(state[0]) is int
            and type(state[1]) is str
            and state[2] is None
            and state[3] is None
            and state[4] is None
            and all(type(v) is int for v in state[5:8])
        )
        if not ok:
            raise self.forbidden_call(f"BUILD of numpy dtype {spec!r} with an unexpected state")
        endian = state[1]
        if spec[0] in "bO":
            valid_endian = endian == "|"
        else:
            valid_endian = endian in ("<", ">", "=")
        if not valid_endian:
            raise self.forbidden_call(f"numpy dtype {spec!r} with byte order {endian!r}")
        dtype = np.dtype(spec if endian == "|" else endian + spec)
        if spec[0] == "U" and state[5] != dtype.itemsize:
            raise self.malformed(f"numpy dtype {spec!r} with element size {state[5]}")
        target.dtype = dtype

    def _build_array(self, target: _ArrayStandIn, state: Any) -> None:
        if target.value is not None:
            raise self.forbidden_call("second BUILD on a numpy array")
        if not (
            type(state) is tuple
            and len(state) == 5
            and type(state[0]) is int
            and state[0] == 1
            and isinstance(state[2], _DtypeStandIn)
            and type(state[3]) is bool
        ):
            raise self.forbidden_call("BUILD of a numpy array with an unexpected state")
        dtype = state[2].resolve()
        shape = self._check_shape(state[1])
        fortran = state[3]
        raw = state[4]
        if dtype.hasobject:
            target.value = self._make_object_array(raw, shape, fortran)
        else:
            if type(raw) is not bytes:
                raise self.forbidden_call(
                    f"numpy array data of type {type(raw).__name__} (bytes expected)"
                )
            target.value = self._make_array(raw, dtype, shape, fortran=fortran)

    # ---- arrays ---------------------------------------------------------------------------
    def _check_shape(self, shape: Any) -> tuple[int, ...]:
        if type(shape) is not tuple or any(type(d) is not int for d in shape):
            raise self.forbidden_call("numpy array shape is not a tuple of ints")
        if len(shape) > MAX_ARRAY_NDIM:
            raise self.forbidden_call(f"numpy array with {len(shape)} dimensions")
        if any(d < 0 for d in shape):
            raise self.malformed(f"numpy array shape {shape} has a negative dimension")
        count = math.prod(shape)
        if count > MAX_ARRAY_ELEMENTS or any(d > MAX_ARRAY_ELEMENTS for d in shape):
            raise self.fail(
                "PICKLE_TOO_LARGE",
                f"numpy array shape {shape} exceeds the cap of {MAX_ARRAY_ELEMENTS} elements",
            )
        return shape

    def _make_array(
        self, raw: bytes, dtype: np.dtype[Any], shape_obj: Any, *, fortran: bool
    ) -> np.ndarray:
        shape = self._check_shape(shape_obj)
        expected = math.prod(shape) * dtype.itemsize
        if len(raw) != expected:
            raise self.malformed(
                f"numpy array {dtype.str} {shape} has {len(raw)} data bytes, expected {expected}"
            )
        flat = np.frombuffer(raw, dtype=dtype)
        array = flat.reshape(shape, order="F" if fortran else "C")
        return np.ascontiguousarray(array.astype(dtype.newbyteorder("="), copy=True))

    def _make_object_array(self, raw: Any, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
        if type(raw) is not list:
            raise self.forbidden_call("object numpy array data is not a list")
        if len(raw) != math.prod(shape):
            raise self.malformed(
                f"object numpy array {shape} has {len(raw)} elements, expected {math.prod(shape)}"
            )
        for item in raw:
            if type(item) is not str:
                raise self.forbidden_call(
                    f"object numpy array element of type {type(item).__name__} "
                    "(only str is allowed)"
                )
        array = np.empty(len(raw), dtype=object)
        array[:] = list(raw)
        # numpy lists object elements in logical (C) order whatever the layout
        return array.reshape(shape).copy()


class _Resolver:
    """Replace stand-ins by their values; refuse cycles and deep nesting."""

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader
        self.done: dict[int, Any] = {}
        self.active: set[int] = set()

    def fail(self, what: str) -> UnsafePickleError:
        return self.reader.fail("PICKLE_MALFORMED", what, offset=len(self.reader.data) - 1)

    def resolve(self, obj: Any, depth: int) -> Any:
        if obj is None or type(obj) in (bool, int, float, str, bytes):
            return obj
        if isinstance(obj, np.ndarray | np.generic):
            return obj
        if depth > MAX_NESTING:
            raise self.fail(f"result nests deeper than {MAX_NESTING} levels")
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            raise self.fail("result contains a reference cycle")
        self.active.add(key)
        result: Any
        if isinstance(obj, _ArrayStandIn):
            if obj.value is None:
                raise self.fail("numpy array was never given its data (BUILD missing)")
            result = obj.value
        elif isinstance(obj, _DtypeStandIn):
            result = obj.resolve()
        elif isinstance(obj, EstimatorState):
            if not obj.built:
                raise self.fail(f"{obj.class_name} was never given its state (BUILD missing)")
            result = EstimatorState(
                obj.class_name,
                {k: self.resolve(v, depth + 1) for k, v in obj.state.items()},
                built=True,
            )
        elif type(obj) is tuple:
            result = tuple(self.resolve(v, depth + 1) for v in obj)
        elif type(obj) is list:
            result = [self.resolve(v, depth + 1) for v in obj]
        elif type(obj) is dict:
            result = {k: self.resolve(v, depth + 1) for k, v in obj.items()}
        elif isinstance(obj, _Global):
            raise self.reader.fail(
                "PICKLE_FORBIDDEN_CALL",
                f"result holds the bare global '{obj.dotted}'",
                offset=len(self.reader.data) - 1,
            )
        else:  # pragma: no cover - every stack value is one of the above
            raise self.fail(f"result holds an unexpected {type(obj).__name__}")
        self.active.discard(key)
        self.done[key] = result
        return result


def _describe(obj: Any) -> str:
    if isinstance(obj, _Global):
        return f"global '{obj.dotted}'"
    if isinstance(obj, EstimatorState):
        return f"a {obj.class_name} instance"
    if isinstance(obj, _ArrayStandIn):
        return "a numpy array"
    if isinstance(obj, _DtypeStandIn):
        return "a numpy dtype"
    return f"a value of type {type(obj).__name__}"


_STOP = object()

_HANDLERS: dict[bytes, Any] = {
    b".": _STOP,
    b"\x80": _Reader.op_proto,
    b"\x95": _Reader.op_frame,
    b"N": _Reader.op_none,
    b"\x88": _Reader.op_true,
    b"\x89": _Reader.op_false,
    b"J": _Reader.op_binint,
    b"K": _Reader.op_binint1,
    b"M": _Reader.op_binint2,
    b"\x8a": _Reader.op_long1,
    b"G": _Reader.op_binfloat,
    b"X": _Reader.op_binunicode,
    b"\x8c": _Reader.op_short_binunicode,
    b"\x8d": _Reader.op_binunicode8,
    b"C": _Reader.op_short_binbytes,
    b"B": _Reader.op_binbytes,
    b"\x8e": _Reader.op_binbytes8,
    b"\x96": _Reader.op_bytearray8,
    b"(": _Reader.op_mark,
    b")": _Reader.op_empty_tuple,
    b"t": _Reader.op_tuple,
    b"\x85": _Reader.op_tuple1,
    b"\x86": _Reader.op_tuple2,
    b"\x87": _Reader.op_tuple3,
    b"]": _Reader.op_empty_list,
    b"a": _Reader.op_append,
    b"e": _Reader.op_appends,
    b"}": _Reader.op_empty_dict,
    b"s": _Reader.op_setitem,
    b"u": _Reader.op_setitems,
    b"q": _Reader.op_binput,
    b"r": _Reader.op_long_binput,
    b"\x94": _Reader.op_memoize,
    b"h": _Reader.op_binget,
    b"j": _Reader.op_long_binget,
    b"c": _Reader.op_global,
    b"\x93": _Reader.op_stack_global,
    b"R": _Reader.op_reduce,
    b"\x81": _Reader.op_newobj,
    b"b": _Reader.op_build,
}

_REDUCERS: dict[str, Callable[[_Reader, _Global, tuple[Any, ...]], Any]] = {
    _G_RECONSTRUCT: _Reader._call_reconstruct,
    _G_DTYPE: _Reader._call_dtype,
    _G_SCALAR: _Reader._call_scalar,
    _G_FROMBUFFER: _Reader._call_frombuffer,
    _G_ENCODE: _Reader._call_encode,
    _G_BYTES: _Reader._call_bytes,
}


def _opcode_tables() -> tuple[dict[bytes, int], dict[bytes, str]]:
    import pickletools  # the opcode table only; nothing here unpickles

    protos: dict[bytes, int] = {}
    names: dict[bytes, str] = {}
    for op in pickletools.opcodes:
        code = op.code.encode("latin1")
        protos[code] = op.proto
        names[code] = op.name
    return protos, names


_OPCODE_PROTO, _OPCODE_NAME = _opcode_tables()


def _opname(code: bytes) -> str:
    return _OPCODE_NAME.get(code, f"0x{code.hex()} (unknown)")


def safe_load_pickle(data: bytes, *, filename: str) -> Any:
    """Read a scikit-learn/numpy pickle as inert data; never executes it.

    Returns dicts, lists, tuples, str, int, float, bool, None, bytes, numpy
    arrays and scalars, and :class:`EstimatorState` stand-ins. Raises
    :class:`UnsafePickleError` for anything outside the allowed subset.
    """
    if len(data) > MAX_PICKLE_BYTES:
        raise UnsafePickleError(
            f"pickle is {len(data)} bytes, above the cap of {MAX_PICKLE_BYTES} bytes",
            code="PICKLE_TOO_LARGE",
            file=filename,
            hint="a legacy ASA pickle is a few megabytes at most; check the file",
            offset=0,
        )
    return _Reader(bytes(data), filename).run()


# --------------------------------------------------------------------------
# Stand-ins -> typed records
# --------------------------------------------------------------------------


def _content_error(filename: str, what: str, message: str) -> LegacyFormatError:
    return LegacyFormatError(
        f"{what}: {message}",
        code="LEGACY_CONTENT",
        file=filename,
        hint="re-export the estimator from a fitted scikit-learn model",
    )


def _expect_estimator(obj: Any, class_name: str, filename: str, what: str) -> dict[str, Any]:
    if not isinstance(obj, EstimatorState) or obj.class_name != class_name:
        found = obj.class_name if isinstance(obj, EstimatorState) else type(obj).__name__
        raise _content_error(filename, what, f"expected a {class_name}, found {found}")
    return obj.state


def _float_vector(value: Any, filename: str, what: str, key: str, ndim: int) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.ndim != ndim:
        raise _content_error(
            filename, what, f"{key} must be a {ndim}-D float array, found {_short(value)}"
        )
    # float32 stays float32: scikit-learn >= 1.8 computes with float32 estimators in float32.
    array = value.astype(np.float32 if value.dtype == np.float32 else np.float64)
    if not np.all(np.isfinite(array)):
        raise _content_error(filename, what, f"{key} contains NaN or infinity")
    return array


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array {value.dtype.str} {tuple(value.shape)}"
    return type(value).__name__


def _int_value(value: Any, filename: str, what: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise _content_error(filename, what, f"{key} must be an integer, found {_short(value)}")
    return int(value)


def _bool_value(state: dict[str, Any], key: str, filename: str, what: str) -> bool:
    value = state.get(key, True)
    if not isinstance(value, bool | np.bool_):
        raise _content_error(filename, what, f"{key} must be a bool, found {_short(value)}")
    return bool(value)


def _opt_str(state: dict[str, Any], key: str, filename: str, what: str) -> str | None:
    value = state.get(key)
    if value is not None and type(value) is not str:
        raise _content_error(filename, what, f"{key} must be a string, found {_short(value)}")
    return value


def to_legacy_scaler(obj: Any, *, filename: str, what: str = "scaler") -> LegacyScaler:
    """Turn a ``StandardScaler`` stand-in into a :class:`LegacyScaler`."""
    state = _expect_estimator(obj, SCALER, filename, what)
    with_mean = _bool_value(state, "with_mean", filename, what)
    with_std = _bool_value(state, "with_std", filename, what)
    for key in ("mean_", "scale_", "n_features_in_"):
        if key not in state:
            raise _content_error(filename, what, f"state has no {key} (is the scaler fitted?)")
    mean = (
        None
        if state["mean_"] is None
        else _float_vector(state["mean_"], filename, what, "mean_", 1)
    )
    scale = (
        None
        if state["scale_"] is None
        else _float_vector(state["scale_"], filename, what, "scale_", 1)
    )
    n_features = _int_value(state["n_features_in_"], filename, what, "n_features_in_")
    if n_features < 1:
        raise _content_error(filename, what, f"n_features_in_ is {n_features}")
    if with_mean and mean is None:
        raise _content_error(filename, what, "with_mean is true but mean_ is None")
    if with_std and scale is None:
        raise _content_error(filename, what, "with_std is true but scale_ is None")
    for key, array in (("mean_", mean), ("scale_", scale)):
        if array is not None and array.shape != (n_features,):
            raise _content_error(
                filename, what, f"{key} has shape {array.shape}, expected ({n_features},)"
            )
    if scale is not None and np.any(scale <= 0):
        raise _content_error(filename, what, "scale_ has non-positive entries")
    return LegacyScaler(
        mean=mean if with_mean else None,
        scale=scale if with_std else None,
        n_features_in=n_features,
        with_mean=with_mean,
        with_std=with_std,
        sklearn_version=_opt_str(state, "_sklearn_version", filename, what),
    )


def to_legacy_logistic(
    obj: Any, *, filename: str, what: str = "LogisticRegression"
) -> LegacyLogisticRegression:
    """Turn a ``LogisticRegression`` stand-in into a :class:`LegacyLogisticRegression`."""
    state = _expect_estimator(obj, LOGISTIC, filename, what)
    for key in ("coef_", "intercept_", "classes_"):
        if key not in state:
            raise _content_error(filename, what, f"state has no {key} (is the model fitted?)")
    coef = _float_vector(state["coef_"], filename, what, "coef_", 2)
    intercept = _float_vector(state["intercept_"], filename, what, "intercept_", 1)
    classes = state["classes_"]
    if not isinstance(classes, np.ndarray) or classes.ndim != 1:
        raise _content_error(
            filename, what, f"classes_ must be a 1-D array, found {_short(classes)}"
        )
    if classes.dtype.kind not in "iubUO":
        raise _content_error(filename, what, f"classes_ has unsupported dtype {classes.dtype.str}")
    if classes.dtype.kind == "O":
        classes = classes.astype(str)
    n_classes = classes.shape[0]
    if n_classes < 2:
        raise _content_error(filename, what, f"classes_ has {n_classes} class(es)")
    if len(set(classes.tolist())) != n_classes:
        raise _content_error(filename, what, "classes_ has duplicate entries")
    rows = 1 if n_classes == 2 else n_classes
    if coef.shape[0] != rows or coef.shape[1] < 1:
        raise _content_error(
            filename,
            what,
            f"coef_ has shape {coef.shape} for {n_classes} classes ({rows} rows expected)",
        )
    if intercept.shape != (rows,):
        raise _content_error(
            filename, what, f"intercept_ has shape {intercept.shape}, expected ({rows},)"
        )
    if "n_features_in_" in state:
        n_features = _int_value(state["n_features_in_"], filename, what, "n_features_in_")
        if n_features != coef.shape[1]:
            raise _content_error(
                filename,
                what,
                f"n_features_in_ is {n_features} but coef_ has {coef.shape[1]} columns",
            )
    return LegacyLogisticRegression(
        coef=coef,
        intercept=intercept,
        classes=np.ascontiguousarray(classes),
        multi_class=_opt_str(state, "multi_class", filename, what),
        solver=_opt_str(state, "solver", filename, what),
        sklearn_version=_opt_str(state, "_sklearn_version", filename, what),
    )
