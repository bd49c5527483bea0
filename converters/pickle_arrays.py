"""numpy array, dtype and scalar builders of the restricted unpickler.

Arrays are built by ``np.frombuffer(...).reshape(...).copy()`` after checking
dtype, shape and byte length; no library code ever sees the file's content.
The opcode machine (:mod:`asa_format.converters.safe_pickle`) inherits these
handlers; they raise through the errors of :class:`OpcodeErrors`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from asa_format.converters.pickle_allowlist import (
    DTYPE_SPEC,
    G_NDARRAY,
    HINT,
    MAX_ARRAY_ELEMENTS,
    MAX_ARRAY_NDIM,
    MAX_OBJECT_CHARS,
    MAX_OBJECT_ELEMENTS,
    MAX_UNICODE_ITEMSIZE,
    GlobalRef,
)
from asa_format.errors import ErrorCode, UnsafePickleError

__all__ = ["ArrayBuilders", "ArrayStandIn", "DtypeStandIn", "OpcodeErrors"]


class DtypeStandIn:
    """A ``numpy.dtype(spec, False, True)`` call, completed by BUILD."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.dtype: np.dtype[Any] | None = None  # set by BUILD (or default)

    def resolve(self) -> np.dtype[Any]:
        if self.dtype is None:
            self.dtype = np.dtype(self.spec)
        return self.dtype


class ArrayStandIn:
    """A ``_reconstruct(ndarray, (0,), b'b')`` call, completed by BUILD."""

    def __init__(self) -> None:
        self.value: np.ndarray | None = None


class OpcodeErrors:
    """Errors located at the byte offset of the opcode being run."""

    filename: str
    op_offset: int

    def fail(self, code: ErrorCode, what: str, offset: int | None = None) -> UnsafePickleError:
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


class ArrayBuilders(OpcodeErrors):
    """Call (REDUCE) and BUILD handlers that make numpy dtypes, scalars and arrays."""

    def _call_reconstruct(self, func: GlobalRef, args: tuple[Any, ...]) -> Any:
        if not (
            len(args) == 3
            and isinstance(args[0], GlobalRef)
            and args[0].kind == G_NDARRAY
            and type(args[1]) is tuple
            and args[1] == (0,)
            and type(args[1][0]) is int
            and type(args[2]) is bytes
            and args[2] == b"b"
        ):
            raise self.forbidden_call(
                f"call of '{func.dotted}' with arguments other than (numpy.ndarray, (0,), b'b')"
            )
        return ArrayStandIn()

    def _call_dtype(self, func: GlobalRef, args: tuple[Any, ...]) -> Any:
        if not (len(args) == 3 and type(args[0]) is str and args[1] is False and args[2] is True):
            raise self.forbidden_call(f"call of '{func.dotted}' with unexpected arguments")
        spec = args[0]
        if not DTYPE_SPEC.fullmatch(spec) or (
            spec[0] == "U" and int(spec[1:]) > MAX_UNICODE_ITEMSIZE
        ):
            raise self.forbidden_call(f"dtype {spec!r} is not allowed")
        return DtypeStandIn(spec)

    def _call_scalar(self, func: GlobalRef, args: tuple[Any, ...]) -> Any:
        if len(args) != 2 or not isinstance(args[0], DtypeStandIn) or type(args[1]) is not bytes:
            raise self.forbidden_call(f"call of '{func.dotted}' with unexpected arguments")
        dtype = args[0].resolve()
        if dtype.hasobject:
            raise self.forbidden_call(f"call of '{func.dotted}' with an object dtype")
        if len(args[1]) != dtype.itemsize:
            raise self.malformed(
                f"numpy scalar of dtype {dtype.str} has {len(args[1])} bytes, "
                f"expected {dtype.itemsize}"
            )
        if dtype.kind == "U":
            self._check_code_points(args[1], dtype)
        value = np.frombuffer(args[1], dtype=dtype)[0]
        if dtype.kind == "U":
            return str(value)
        return value.astype(dtype.newbyteorder("="))[()]

    def _call_frombuffer(self, func: GlobalRef, args: tuple[Any, ...]) -> Any:
        if not (
            len(args) == 4
            and type(args[0]) is bytes
            and isinstance(args[1], DtypeStandIn)
            and type(args[3]) is str
            and args[3] in ("C", "F")
        ):
            raise self.forbidden_call(f"call of '{func.dotted}' with unexpected arguments")
        dtype = args[1].resolve()
        if dtype.hasobject:
            raise self.forbidden_call(f"call of '{func.dotted}' with an object dtype")
        return self._make_array(args[0], dtype, args[2], fortran=args[3] == "F")

    def _build_dtype(self, target: DtypeStandIn, state: Any) -> None:
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

    def _build_array(self, target: ArrayStandIn, state: Any) -> None:
        if target.value is not None:
            raise self.forbidden_call("second BUILD on a numpy array")
        if not (
            type(state) is tuple
            and len(state) == 5
            and type(state[0]) is int
            and state[0] == 1
            and isinstance(state[2], DtypeStandIn)
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
        if dtype.kind == "U":
            self._check_code_points(raw, dtype)
        flat = np.frombuffer(raw, dtype=dtype)
        array = flat.reshape(shape, order="F" if fortran else "C")
        return np.ascontiguousarray(array.astype(dtype.newbyteorder("="), copy=True))

    def _check_code_points(self, raw: bytes, dtype: np.dtype[Any]) -> None:
        """UCS-4 data must hold Unicode scalar values (no surrogates, nothing >= 0x110000)."""
        units = np.frombuffer(
            raw[: len(raw) // 4 * 4], dtype=np.dtype("u4").newbyteorder(dtype.byteorder)
        )
        bad = (units >= 0x110000) | ((units >= 0xD800) & (units <= 0xDFFF))
        if bad.any():
            cp = int(units[np.argmax(bad)])
            raise self.malformed(
                f"numpy string {dtype.str} holds U+{cp:X}, not a Unicode scalar value"
            )

    def _make_object_array(self, raw: Any, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
        if type(raw) is not list:
            raise self.forbidden_call("object numpy array data is not a list")
        if len(raw) > MAX_OBJECT_ELEMENTS:
            raise self.fail(
                "PICKLE_TOO_LARGE",
                f"object numpy array has {len(raw)} elements, over the cap of {MAX_OBJECT_ELEMENTS}",
            )
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
        longest = max((len(item) for item in raw), default=0)
        if (
            longest * len(raw) > MAX_OBJECT_CHARS
        ):  # its fixed-width form (astype(str)) would be this large
            raise self.fail(
                "PICKLE_TOO_LARGE",
                f"object numpy array of {len(raw)} strings up to {longest} characters exceeds "
                f"the cap of {MAX_OBJECT_CHARS} characters",
            )
        array = np.empty(len(raw), dtype=object)
        array[:] = list(raw)
        # numpy lists object elements in logical (C) order whatever the layout
        return array.reshape(shape).copy()
