"""Read scikit-learn / numpy pickles as data, without executing them.

A pickle is a small stack-machine program: the standard unpickler imports whatever
globals the file names and calls them. This module never does that. It walks
the opcodes itself, with its own stack and memo, and accepts only what a
fitted ``StandardScaler``, a ``LogisticRegression`` or a ``dict`` of those
needs:

* globals come from an exact ``(module, name)`` table (:data:`ALLOWED_GLOBALS`,
  in :mod:`asa_format.converters.pickle_allowlist`); nothing is imported and no
  dotted name is resolved;
* every global maps to an inert handler: estimators become
  :class:`EstimatorState` stand-ins holding a state dict, arrays are built by
  ``np.frombuffer(...).reshape(...).copy()`` after checking dtype, shape and
  byte length (:mod:`asa_format.converters.pickle_arrays`); no library code
  ever sees the file's content;
* ``REDUCE``, ``NEWOBJ`` and ``BUILD`` each have their own allowance, with
  exact argument checks; ``BUILD`` is accepted only on estimator, array and
  dtype stand-ins, and estimator state keys come from a per-class list;
* opcodes such pickles never need are refused, as are protocols below 2,
  trailing bytes after ``STOP`` and files over :data:`MAX_PICKLE_BYTES`.

Anything refused raises :class:`~asa_format.errors.UnsafePickleError` with the
byte offset of the opcode. :func:`to_legacy_scaler` and
:func:`to_legacy_logistic` (:mod:`asa_format.converters.pickle_records`) turn
stand-ins into the typed records of :mod:`asa_format.converters.legacy_model`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from asa_format.converters.pickle_allowlist import (
    ALLOWED_GLOBALS,
    ESTIMATOR_STATE_KEYS,
    G_BYTES,
    G_DTYPE,
    G_ENCODE,
    G_FROMBUFFER,
    G_RECONSTRUCT,
    G_SCALAR,
    MAX_ARRAY_ELEMENTS,
    MAX_DICT_ITEMS,
    MAX_MEMO_ENTRIES,
    MAX_PICKLE_BYTES,
    MAX_STACK_DEPTH,
    EstimatorState,
    GlobalRef,
)
from asa_format.converters.pickle_arrays import ArrayBuilders, ArrayStandIn, DtypeStandIn
from asa_format.converters.pickle_records import to_legacy_logistic, to_legacy_scaler
from asa_format.converters.pickle_resolve import Resolver
from asa_format.errors import UnsafePickleError

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


class _Mark:
    pass


class _Reader(ArrayBuilders):
    def __init__(self, data: bytes, filename: str) -> None:
        self.data = data
        self.filename = filename
        self.pos = 0
        self.op_offset = 0
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.protocol = 0

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
        return Resolver(self).resolve(result, 0)

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
        if len(target) + len(items) // 2 > MAX_DICT_ITEMS:  # checked before any insertion
            raise self.fail(
                "PICKLE_TOO_LARGE",
                f"{opname} grows a dict past the cap of {MAX_DICT_ITEMS} entries",
            )
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
        self.push(GlobalRef(module, name, kind))

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
        if not isinstance(func, GlobalRef):
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
        if not isinstance(cls, GlobalRef) or not cls.kind.startswith("estimator:"):
            raise self.forbidden_call(f"NEWOBJ of {_describe(cls)} is not allowed")
        if args != () or type(args) is not tuple:
            raise self.forbidden_call(f"NEWOBJ of '{cls.dotted}' with arguments")
        self.push(EstimatorState(cls.kind.split(":", 1)[1]))

    def op_build(self) -> None:
        state = self.pop()
        target = self.top()
        if isinstance(target, EstimatorState):
            self._build_estimator(target, state)
        elif isinstance(target, ArrayStandIn):
            self._build_array(target, state)
        elif isinstance(target, DtypeStandIn):
            self._build_dtype(target, state)
        else:
            raise self.forbidden_call(f"BUILD (set state) on {_describe(target)} is not allowed")

    # ---- call handlers ----------------------------------------------------------------------
    def _call_encode(self, func: GlobalRef, args: tuple[Any, ...]) -> Any:
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

    def _call_bytes(self, func: GlobalRef, args: tuple[Any, ...]) -> Any:
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


def _describe(obj: Any) -> str:
    if isinstance(obj, GlobalRef):
        return f"global '{obj.dotted}'"
    if isinstance(obj, EstimatorState):
        return f"a {obj.class_name} instance"
    if isinstance(obj, ArrayStandIn):
        return "a numpy array"
    if isinstance(obj, DtypeStandIn):
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

_REDUCERS: dict[str, Callable[[_Reader, GlobalRef, tuple[Any, ...]], Any]] = {
    G_RECONSTRUCT: _Reader._call_reconstruct,
    G_DTYPE: _Reader._call_dtype,
    G_SCALAR: _Reader._call_scalar,
    G_FROMBUFFER: _Reader._call_frombuffer,
    G_ENCODE: _Reader._call_encode,
    G_BYTES: _Reader._call_bytes,
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
