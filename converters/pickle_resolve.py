"""The last step of the restricted unpickler: stand-ins replaced by their values.

After ``STOP`` the result may still hold array, dtype and estimator
stand-ins; :class:`Resolver` replaces them by their built values, refusing
reference cycles, deep nesting, unfinished stand-ins (no ``BUILD``) and bare
globals.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from asa_format.converters.pickle_allowlist import MAX_NESTING, EstimatorState, GlobalRef
from asa_format.converters.pickle_arrays import ArrayStandIn, DtypeStandIn
from asa_format.errors import ErrorCode, UnsafePickleError

__all__ = ["PickleReader", "Resolver"]


class PickleReader(Protocol):
    """What the resolver needs of the opcode machine."""

    data: bytes

    def fail(self, code: ErrorCode, what: str, offset: int | None = None) -> UnsafePickleError: ...


class Resolver:
    """Replace stand-ins by their values; refuse cycles and deep nesting."""

    def __init__(self, reader: PickleReader) -> None:
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
        if isinstance(obj, ArrayStandIn):
            if obj.value is None:
                raise self.fail("numpy array was never given its data (BUILD missing)")
            result = obj.value
        elif isinstance(obj, DtypeStandIn):
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
        elif isinstance(obj, GlobalRef):
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
