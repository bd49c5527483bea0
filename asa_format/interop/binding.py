"""The model binding of an imported vector: from the source, the options, or a config.json."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asa_format import constants as C
from asa_format.errors import ConversionError, RuntimeCompatError
from asa_format.format.contents import BundleContents, InterventionData
from asa_format.format.jsonio import loads_strict
from asa_format.format.manifest import ModelBinding, Provenance

__all__ = ["ImportBinding", "make_contents", "safe_name"]

MAX_CONFIG_BYTES = 4 << 20


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

    def resolved(self) -> ImportBinding:
        """Fill unknown members from ``model_dir/config.json``; a conflict is an error."""
        if self.model_dir is None:
            return self
        path = Path(self.model_dir) / "config.json"
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise RuntimeCompatError(
                f"cannot read {str(path)!r}: {exc.strerror}",
                code="MODEL_NOT_FOUND",
                hint="--model names a model directory with a config.json",
            ) from exc
        if len(data) > MAX_CONFIG_BYTES:
            raise ConversionError(
                f"{str(path)!r} is over {MAX_CONFIG_BYTES} bytes",
                code="IMPORT_BINDING",
                hint="is this a model configuration?",
            )
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
            ok = (
                isinstance(value, str)
                if key == "model_type"
                else (type(value) is int and value > 0)
            )
            if not ok:
                raise ConversionError(
                    f"{str(path)!r}: {key} is {value!r}",
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
