"""What ``save_bundle`` is given, checked member by member before anything is written.

A caller builds :class:`~asa_format.format.contents.BundleContents` by hand; a
wrong type (a str coefficient, a None steering, a list for a mapping) or a
non-finite number (a NaN coefficient, an infinite alpha, NaN in provenance
metadata) must end in a coded ``UsageError`` naming the member, not in a
``ValueError`` from the JSON writer or an ``AttributeError`` halfway
through. Ranges and string rules are the schema's: the written manifest is
checked against it (``BundleError``, ``MANIFEST_SCHEMA``) before it is
moved into place; what is checked here is what the schema cannot see
because it would crash or silently coerce first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from asa_format.errors import UsageError
from asa_format.format.jsonio import MAX_JSON_DEPTH
from asa_format.format.manifest import ModelBinding, Producer, Provenance, Steering

__all__ = ["check_contents"]


def _bad(where: str, message: str) -> UsageError:
    return UsageError(f"{where} {message}", hint="fix the contents passed to save_bundle")


def _number(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _bad(where, f"must be a number, not {type(value).__name__}")
    try:
        finite = math.isfinite(float(value))
    except OverflowError:
        finite = False
    if not finite:
        raise _bad(where, f"is {str(value)[:40]}; every number of a bundle is finite")


def _integer(value: Any, where: str, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _bad(where, f"must be an integer, not {type(value).__name__}")


def _text(value: Any, where: str, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str):
        raise _bad(where, f"must be a str, not {type(value).__name__}")


def _instance(value: Any, cls: type, where: str, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, cls):
        raise _bad(where, f"must be a {cls.__name__}, not {type(value).__name__}")


def _vector(value: Any, where: str) -> None:
    """A numeric array (its shape and values are checked where it is written, with the
    safetensors codes: HIDDEN_SIZE_MISMATCH, SAFETENSORS_SHAPE, SAFETENSORS_NONFINITE)."""
    try:
        arr = np.asarray(value)
    except Exception:  # an object numpy cannot turn into an array at all
        raise _bad(where, f"is not an array: {type(value).__name__}") from None
    if arr.dtype.kind not in "fiu":
        raise _bad(where, f"must be a float vector, not an array of {arr.dtype}")


def _mapping(value: Any, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise _bad(where, f"must be a mapping, not {type(value).__name__}")
    return value


def _sequence(value: Any, where: str) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise _bad(where, f"must be a list or tuple, not {type(value).__name__}")
    return value


def _json(value: Any, where: str, depth: int = 0) -> None:
    """Free-form JSON (provenance metadata): JSON types only, finite numbers, bounded depth."""
    if depth > MAX_JSON_DEPTH:
        raise _bad(where, f"nests deeper than {MAX_JSON_DEPTH} levels")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(where, f"is {value}; JSON has no NaN or infinity")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _json(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _bad(where, f"has a key of type {type(key).__name__}; JSON keys are str")
            _json(item, f"{where}.{key}", depth + 1)
        return
    raise _bad(where, f"is a {type(value).__name__}, not a JSON value")


def _model(model: Any, where: str) -> None:
    _instance(model, ModelBinding, where)
    _integer(model.hidden_size, f"{where}.hidden_size")
    _text(model.id, f"{where}.id", optional=True)
    _text(model.type, f"{where}.type", optional=True)
    _integer(model.num_layers, f"{where}.num_layers", optional=True)


def _provenance(prov: Any, where: str) -> None:
    _instance(prov, Provenance, where, optional=True)
    if prov is None:
        return
    _text(prov.source, f"{where}.source")
    _instance(prov.tool, Producer, f"{where}.tool", optional=True)
    _mapping(prov.inputs, f"{where}.inputs")
    _json(
        dict(_mapping(prov.library_versions, f"{where}.library_versions")),
        f"{where}.library_versions",
    )
    _json(dict(_mapping(prov.metadata, f"{where}.metadata")), f"{where}.metadata")


def _asa(contents: Any, where: str) -> None:
    _model(contents.model, f"{where}.model")
    _integer(contents.layer, f"{where}.layer")
    _instance(contents.steering, Steering, f"{where}.steering")
    s = contents.steering
    for name in ("alpha", "tau", "beta", "no_probe_probability"):
        _number(getattr(s, name), f"{where}.steering.{name}")
    _text(s.policy, f"{where}.steering.policy")
    domains = _sequence(contents.domains, f"{where}.domains")
    for i, name in enumerate(domains):
        _text(name, f"{where}.domains[{i}]")
    for name in _mapping(contents.vectors, f"{where}.vectors"):  # values: the safetensors writer
        _text(name, f"{where}.vectors key")
    for name in ("scaler", "router"):
        if not isinstance(getattr(contents, name), (bytes, bytearray)):
            raise _bad(f"{where}.{name}", "must be the bytes of an ONNX graph")
    for name, graph in _mapping(contents.probes, f"{where}.probes").items():
        _text(name, f"{where}.probes key")
        if not isinstance(graph, (bytes, bytearray)):
            raise _bad(f"{where}.probes[{name!r}]", "must be the bytes of an ONNX graph")
    _provenance(contents.provenance, f"{where}.provenance")
    _instance(contents.producer, Producer, f"{where}.producer", optional=True)


def check_contents(contents: Any) -> None:
    """Raise a coded UsageError unless ``contents`` has the types and finite numbers a bundle needs."""
    from asa_format.format.contents import BundleContents, InterventionData
    from asa_format.format.interventions import ConditionGate

    if not isinstance(contents, BundleContents):
        raise UsageError(
            f"contents must be a BundleContents, not {type(contents).__name__}",
            hint="build them with asa_format.BundleContents(...) or read_bundle_contents(path)",
        )
    _model(contents.model, "contents.model")
    if contents.has_asa:
        _asa(contents, "contents")
    for i, iv in enumerate(_sequence(contents.interventions, "contents.interventions")):
        where = f"contents.interventions[{i}]"
        _instance(iv, InterventionData, where)
        _text(iv.name, f"{where}.name")
        _number(iv.coefficient, f"{where}.coefficient")
        _text(iv.policy, f"{where}.policy")
        for role in ("directions", "conditions"):
            for block, vec in _mapping(getattr(iv, role), f"{where}.{role}").items():
                _integer(block, f"{where}.{role} key")
                _vector(vec, f"{where}.{role}[{block}]")
        _instance(iv.condition, ConditionGate, f"{where}.condition", optional=True)
        if iv.condition is not None:
            g = iv.condition
            _number(g.threshold, f"{where}.condition.threshold")
            for b in _sequence(g.blocks, f"{where}.condition.blocks"):
                _integer(b, f"{where}.condition.blocks[]")
            _text(g.comparator, f"{where}.condition.comparator")
            _text(g.aggregate, f"{where}.condition.aggregate")
    _text(contents.asa_name, "contents.asa_name")
    _integer(contents.asa_position, "contents.asa_position")
    _provenance(contents.provenance, "contents.provenance")
    if contents.card is not None and not isinstance(contents.card, (bool, str)):
        raise _bad(
            "contents.card", f"must be a bool or the card text, not {type(contents.card).__name__}"
        )
    _text(contents.format_version, "contents.format_version", optional=True)
    _instance(contents.producer, Producer, "contents.producer", optional=True)
