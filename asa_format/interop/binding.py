"""The model binding of an imported vector: from the source, the options, or a config.json."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format.errors import AsaError, ConversionError, RuntimeCompatError, UsageError
from asa_format.format.contents import BundleContents, InterventionData
from asa_format.format.interventions import NAME_PATTERN
from asa_format.format.jsonio import loads_strict
from asa_format.format.manifest import ModelBinding, Provenance
from asa_format.format.textrules import is_label, is_text
from asa_format.storage.inputs import MAX_CONFIG_BYTES, check_path_arg, read_input

__all__ = ["ImportBinding", "check_coefficient", "check_import_args", "make_contents", "safe_name"]

MAX_COEFFICIENT = 1e6  # the manifest schema's range of a coefficient


def _usage(message: str, hint: str) -> UsageError:
    return UsageError(message, hint=hint)


def check_coefficient(value: Any, name: str = "coefficient") -> float:
    """A finite real number in [-1e6, 1e6] (the manifest's range), else a coded UsageError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise _usage(
            f"{name} must be a number, not {type(value).__name__}", f"pass {name} as a float"
        )
    try:
        number = float(value)
    except OverflowError:  # an int beyond float
        number = math.inf
    if not math.isfinite(number) or abs(number) > MAX_COEFFICIENT:
        raise _usage(
            f"{name} is {str(value)[:40]}; it must be a finite number in "
            f"[-{MAX_COEFFICIENT:g}, {MAX_COEFFICIENT:g}]",
            f"pass a finite {name}",
        )
    return number


def check_import_args(
    binding: Any, name: Any, coefficient: Any, card: Any, *, name_required: bool = False
) -> None:
    """The common arguments of the import functions, checked before any file is read."""
    if binding is not None and not isinstance(binding, ImportBinding):
        raise _usage(
            f"binding must be an ImportBinding or None, not {type(binding).__name__}",
            "pass asa_format.interop.ImportBinding(...)",
        )
    if (name is not None or name_required) and not (
        isinstance(name, str) and NAME_PATTERN.match(name)
    ):
        raise _usage(
            f"name {str(name)[:80]!r} is not an intervention name",
            "use 1-64 characters: letters, digits, '_', '.', '-' (a letter or digit first)",
        )
    check_coefficient(coefficient)
    if not isinstance(card, (bool, str)):
        raise _usage(
            f"card must be a bool or the card text, not {type(card).__name__}",
            "pass card=True or card=False",
        )


def _optional_int(value: Any, name: str, high: int) -> None:
    if value is not None and (type(value) is not int or not 1 <= value <= high):
        raise _usage(
            f"{name} is {str(value)[:40]!r}; expected an integer in 1..{high} or None",
            f"pass {name} as a positive integer",
        )


def _optional_text(value: Any, name: str, check: Callable[[Any], bool]) -> None:
    if value is not None and not check(value):
        raise _usage(
            f"{name} is {str(value)[:60]!r}; expected text without control characters or None",
            f"pass {name} as a short string",
        )


def _text_config(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = cfg.get("text_config")
    return inner if isinstance(inner, Mapping) else cfg


@dataclass(frozen=True)
class ImportBinding:
    """What the user says about the model (every member optional)."""

    model_type: str | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    model_id: str | None = None
    model_dir: str | os.PathLike[str] | None = (
        None  # a model directory: its config.json only is read
    )

    def __post_init__(self) -> None:
        _optional_text(self.model_type, "model_type", is_label)
        _optional_text(self.model_id, "model_id", is_text)
        _optional_int(self.num_layers, "num_layers", 100_000)
        _optional_int(self.hidden_size, "hidden_size", C.MAX_HIDDEN_SIZE)
        if self.model_dir is not None:
            check_path_arg(self.model_dir, "model_dir")

    def resolved(self) -> ImportBinding:
        """Fill unknown members from ``model_dir/config.json``; a conflict is an error."""
        if self.model_dir is None:
            return self
        path = Path(self.model_dir) / "config.json"
        try:  # a regular file under the cap: never a FIFO, a device or a huge file
            data = read_input(path, what="the model's config.json", cap=MAX_CONFIG_BYTES)
        except AsaError as exc:
            if exc.code != "IO_ERROR":
                raise
            raise RuntimeCompatError(
                exc.message,
                code="MODEL_NOT_FOUND",
                file=str(path),
                hint="--model names a model directory with a config.json",
            ) from None
        try:
            cfg = loads_strict(data.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise ConversionError(
                f"{str(path)!r} is not valid JSON: {exc}",
                code="IMPORT_BINDING",
                hint="pass a model directory with a valid config.json",
            ) from exc
        if not isinstance(cfg, dict):
            raise ConversionError(
                f"{str(path)!r} is not a JSON object",
                code="IMPORT_BINDING",
                hint="pass a model directory",
            )
        text = _text_config(cfg)
        found: dict[str, Any] = {
            "model_type": text.get("model_type", cfg.get("model_type")),
            "num_layers": text.get("num_hidden_layers", text.get("n_layer")),
            "hidden_size": text.get("hidden_size", text.get("n_embd")),
        }
        out: dict[str, Any] = dict(
            model_type=self.model_type,
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            model_id=self.model_id,
        )
        for key, value in found.items():
            if value is None:
                continue
            high = C.MAX_HIDDEN_SIZE if key == "hidden_size" else 100_000
            ok = (
                is_label(value)
                if key == "model_type"
                else (type(value) is int and 0 < value <= high)
            )
            if not ok:
                raise ConversionError(
                    f"{str(path)!r}: {key} is {str(value)[:60]!r}",
                    code="IMPORT_BINDING",
                    hint="the model configuration is malformed",
                )
            given = out[key]
            if given is not None and given != value:
                raise ConversionError(
                    f"--{key.replace('_', '-')} is {given!r} but {str(path)!r} says {value!r}",
                    code="IMPORT_BINDING",
                    hint="drop the option or pass the right model",
                )
            out[key] = value
        return ImportBinding(**out)

    def binding(self, hidden_size: int, model_hint: str | None, blocks: list[int]) -> ModelBinding:
        """The bundle's binding for vectors of ``hidden_size`` on ``blocks``."""
        b = self.resolved()
        if b.hidden_size is not None and b.hidden_size != hidden_size:
            raise ConversionError(
                f"the vectors have length {hidden_size} but the model's hidden size is {b.hidden_size}",
                code="IMPORT_BINDING",
                hint="these vectors belong to another model",
            )
        model_type = b.model_type
        if model_hint is not None and model_type is not None and model_hint != model_type:
            raise ConversionError(
                f"the source is for model type {model_hint!r}, the model given is {model_type!r}",
                code="IMPORT_BINDING",
                hint="these vectors belong to another model",
            )
        model_type = model_type or model_hint
        if b.num_layers is not None and blocks and max(blocks) >= b.num_layers:
            raise ConversionError(
                f"the source steers block {max(blocks)} but the model has {b.num_layers} blocks",
                code="IMPORT_BINDING",
                hint="these vectors belong to another model",
            )
        if not 1 <= hidden_size <= C.MAX_HIDDEN_SIZE:
            raise ConversionError(
                f"vector length {hidden_size} is outside 1..{C.MAX_HIDDEN_SIZE}",
                code="IMPORT_INVALID",
                hint="the source is malformed",
            )
        return ModelBinding(
            hidden_size=hidden_size, id=b.model_id, type=model_type, num_layers=b.num_layers
        )


def safe_name(stem: str) -> str:
    """An intervention name from a file stem (letters, digits, '_', '.', '-')."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-._")[:64]
    return name if name and name[0].isalnum() else "vector"


def make_contents(
    name: str,
    directions: Mapping[int, np.ndarray],
    binding: ImportBinding,
    *,
    model_hint: str | None,
    source: str,
    metadata: Mapping[str, Any] | None = None,
    coefficient: float = 1.0,
    card: bool = True,
) -> BundleContents:
    """One ``always`` intervention at every block of ``directions`` (all positions)."""
    check_import_args(binding, name, coefficient, card, name_required=True)
    coefficient = check_coefficient(coefficient)
    if not directions:
        raise ConversionError(
            "the source holds no direction",
            code="IMPORT_INVALID",
            hint="a steering vector needs at least one block",
        )
    lengths = {int(np.asarray(v).shape[0]) for v in directions.values()}
    if len(lengths) != 1:
        raise ConversionError(
            f"the directions have different lengths {sorted(lengths)}",
            code="IMPORT_INVALID",
            hint="every block's vector has the hidden size",
        )
    for block, vec in directions.items():
        arr = np.asarray(vec)
        if arr.ndim != 1:
            raise ConversionError(
                f"block {block}: direction has shape {list(arr.shape)}, expected 1-D",
                code="IMPORT_INVALID",
                hint="one vector per block",
            )
        with np.errstate(over="ignore", invalid="ignore"):
            finite = bool(
                np.isfinite(arr.astype(np.float64)).all()
                and np.isfinite(arr.astype(np.float32)).all()
            )
        if not finite:
            raise ConversionError(
                f"block {block}: direction has NaN or infinite values (in float32)",
                code="IMPORT_INVALID",
                hint="the source is corrupt",
            )
        if type(block) is not int or not 0 <= block <= 99999:
            raise ConversionError(
                f"block index {block!r} is not a block number 0..99999",
                code="IMPORT_INVALID",
                hint="blocks are 0-based decoder block indices",
            )
    model = binding.binding(lengths.pop(), model_hint, sorted(directions))
    meta = {"source_format": source, **(dict(metadata) if metadata else {})}
    data = InterventionData(
        name=name,
        directions={b: np.asarray(v, dtype=np.float32) for b, v in sorted(directions.items())},
        coefficient=coefficient,
    )
    tool_prov = Provenance(source="other", metadata=json.loads(json.dumps(meta, sort_keys=True)))
    return BundleContents(model=model, interventions=[data], provenance=tool_prov, card=card)
