"""The data ``asa fit`` reads: labelled prompts or contrastive pairs, checked.

Two layouts:

* a directory in Liquid-ASA's layout: ``cal_data.json``, ``train_data.json``,
  ``valid_data.json``, ``test_data.json``, each a JSON list of
  ``{"id", "domain", "label", "instruction"}`` (label 1 = needs a tool);
* one file: JSON Lines (``.jsonl``, one object per line) or a JSON list, whose
  rows carry a ``split`` field (``cal``, ``train``, ``valid``, ``test``), or no
  split at all where the protocol needs none.

A row is either a labelled prompt (``domain``, ``label``, ``instruction``,
optionally ``id``) or a contrastive pair (``positive``, ``negative``); one
file holds one kind. Every problem is a :class:`FitError` naming the file
and the row; nothing is guessed (a label is the integer 0 or 1, an id is
unique, text is a non-empty string).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asa_format.errors import FitError
from asa_format.format.jsonio import dumps_canonical, loads_strict
from asa_format.format.manifest import FileEntry

__all__ = [
    "MAX_DATA_BYTES",
    "SPLITS",
    "FitData",
    "Pair",
    "Row",
    "check_asa_data",
    "check_contrastive_data",
    "load_data",
]

SPLITS = ("cal", "train", "valid", "test")
MAX_DATA_BYTES = 512 << 20  # one data file
_ROW_KEYS = ("domain", "label", "instruction")
_PAIR_KEYS = ("positive", "negative")


@dataclass(frozen=True)
class Row:
    """A labelled prompt (label 1: the wanted behaviour, e.g. "needs a tool")."""

    id: str
    domain: str
    label: int
    instruction: str
    split: str | None


@dataclass(frozen=True)
class Pair:
    """A contrastive pair: the same request with and without the behaviour."""

    id: str
    positive: str
    negative: str
    split: str | None


@dataclass
class FitData:
    """Checked rows of one data set, in file order, and where they came from."""

    kind: str  # "labelled" or "pairs"
    rows: list[Row] = field(default_factory=list)
    pairs: list[Pair] = field(default_factory=list)
    inputs: dict[str, FileEntry] = field(default_factory=dict)  # file name -> size, sha256
    layout: str = "file"  # "directory" (Liquid-ASA) or "file"

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the rows (independent of file formatting)."""
        items: list[Any]
        if self.kind == "labelled":
            items = [[r.split, r.id, r.domain, r.label, r.instruction] for r in self.rows]
        else:
            items = [[p.split, p.id, p.positive, p.negative] for p in self.pairs]
        return "sha256:" + hashlib.sha256(dumps_canonical([self.kind, items])).hexdigest()

    @property
    def splits(self) -> list[str]:
        """The splits present, in the order of :data:`SPLITS` (``None`` rows excluded)."""
        seen = {r.split for r in self.rows} | {p.split for p in self.pairs}
        return [s for s in SPLITS if s in seen]

    def split_rows(self, split: str | None) -> list[Row]:
        return [r for r in self.rows if r.split == split]

    def split_pairs(self, split: str | None) -> list[Pair]:
        return [p for p in self.pairs if p.split == split]


def _invalid(message: str, file: str | None, hint: str) -> FitError:
    return FitError(message, code="FIT_DATA_INVALID", file=file, hint=hint)


_ROW_HINT = (
    'each row is {"id", "domain", "label": 0 or 1, "instruction"} (labelled prompts) or '
    '{"positive", "negative"} (contrastive pairs), with "split" in a single file'
)


def _read(path: Path) -> tuple[bytes, FileEntry]:
    name = path.name
    try:
        if path.is_symlink() or not path.is_file():
            raise _invalid(f"{name} is not a regular file", name, "pass a data file or directory")
        size = path.stat().st_size
        if size > MAX_DATA_BYTES:
            raise _invalid(
                f"{name} is {size} bytes, over the limit of {MAX_DATA_BYTES}",
                name,
                "split the data or fit on fewer rows",
            )
        data = path.read_bytes()
    except OSError as exc:
        raise FitError(
            f"cannot read {name}: {exc.strerror}",
            code="IO_ERROR",
            file=name,
            hint="check the path and its permissions",
        ) from exc
    return data, FileEntry(size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(
            f"{name} is not UTF-8 text (byte {exc.start})", name, "save the file as UTF-8"
        ) from exc


def _parse_json(text: str, name: str, where: str = "") -> Any:
    try:
        return loads_strict(text)
    except ValueError as exc:
        raise _invalid(
            f"{name}{where} is not valid JSON: {exc}", name, "write one JSON document"
        ) from exc


def _documents(data: bytes, name: str) -> list[tuple[str, Any]]:
    """(where, object) of every row of one file."""
    text = _text(data, name)
    if name.endswith(".jsonl"):
        out = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            out.append((f"line {n}", _parse_json(line, name, f" line {n}")))
        return out
    doc = _parse_json(text, name)
    if not isinstance(doc, list):
        raise _invalid(f"{name} holds a JSON {type(doc).__name__}, not a list", name, _ROW_HINT)
    return [(f"row {i}", item) for i, item in enumerate(doc)]


def _string(obj: dict[str, Any], key: str, name: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _invalid(
            f"{name} {where}: {key!r} is {type(value).__name__}, not a string", name, _ROW_HINT
        )
    return value


def _prompt(obj: dict[str, Any], key: str, name: str, where: str) -> str:
    value = _string(obj, key, name, where)
    if not value.strip():
        raise FitError(
            f"{name} {where}: {key!r} is empty",
            code="FIT_EMPTY_PROMPT",
            file=name,
            hint="remove the row or give it text",
        )
    return value


def _split_of(obj: dict[str, Any], name: str, where: str, fixed: str | None) -> str | None:
    if fixed is not None:
        return fixed
    if "split" not in obj:
        return None
    value = obj["split"]
    if value not in SPLITS:
        raise _invalid(
            f"{name} {where}: split {value!r} is not one of {list(SPLITS)}", name, _ROW_HINT
        )
    return str(value)


def _row(obj: Any, name: str, where: str, split: str | None) -> Row | Pair:
    if not isinstance(obj, dict):
        raise _invalid(f"{name} {where} is a {type(obj).__name__}, not an object", name, _ROW_HINT)
    split = _split_of(obj, name, where, split)
    raw_id = obj.get("id", None)
    if raw_id is not None and (
        isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or raw_id == ""
    ):
        raise _invalid(f"{name} {where}: 'id' is not a string or an integer", name, _ROW_HINT)
    if all(k in obj for k in _PAIR_KEYS) and not any(k in obj for k in _ROW_KEYS):
        rid = str(raw_id) if raw_id is not None else f"{name}:{where}"
        return Pair(
            rid,
            _prompt(obj, "positive", name, where),
            _prompt(obj, "negative", name, where),
            split,
        )
    missing = [k for k in _ROW_KEYS if k not in obj]
    if missing:
        raise _invalid(f"{name} {where}: no {', '.join(map(repr, missing))}", name, _ROW_HINT)
    label = obj["label"]
    if isinstance(label, bool) or label not in (0, 1) or not isinstance(label, int):
        raise _invalid(
            f"{name} {where}: label {label!r} is not the integer 0 or 1", name, _ROW_HINT
        )
    domain = _string(obj, "domain", name, where)
    if not domain.strip():
        raise _invalid(f"{name} {where}: 'domain' is empty", name, "name every row's domain")
    rid = str(raw_id) if raw_id is not None else f"{name}:{where}"
    return Row(rid, domain, int(label), _prompt(obj, "instruction", name, where), split)


def load_data(path: str | os.PathLike[str]) -> FitData:
    """Read and check a data directory (Liquid-ASA layout) or file (``.jsonl`` / ``.json``)."""
    root = Path(path)
    if root.is_dir() and not root.is_symlink():
        sources: list[tuple[Path, str | None]] = [(root / f"{s}_data.json", s) for s in SPLITS]
        sources = [(p, s) for p, s in sources if p.exists() or p.is_symlink()]
        if not sources:
            raise FitError(
                f"{str(path)!r} holds none of {', '.join(f'{s}_data.json' for s in SPLITS)}",
                code="FIT_SPLIT_MISSING",
                file=str(path),
                hint="pass a directory in Liquid-ASA's layout, or one .jsonl file with a 'split' field",
            )
        layout = "directory"
    elif root.exists() and not root.is_symlink():
        sources = [(root, None)]
        layout = "file"
    else:
        raise _invalid(
            f"data {str(path)!r} does not exist (or is a symbolic link)",
            str(path),
            "pass a data directory or a .jsonl / .json file",
        )
    data = FitData(kind="labelled", layout=layout)
    items: list[Row | Pair] = []
    for file, split in sources:
        raw, entry = _read(file)
        data.inputs[file.name] = entry
        for where, obj in _documents(raw, file.name):
            items.append(_row(obj, file.name, where, split))
    kinds = {type(i) for i in items}
    if not items:
        raise _invalid(f"{str(path)!r} holds no rows", str(path), _ROW_HINT)
    if len(kinds) > 1:
        raise _invalid(
            "the data mixes labelled prompts and contrastive pairs", str(path), _ROW_HINT
        )
    with_split = {i.split is not None for i in items}
    if len(with_split) > 1:
        raise _invalid(
            "some rows have a 'split' field and others do not",
            str(path),
            "give every row a split, or none",
        )
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise _invalid(f"id {item.id!r} appears twice", str(path), "give every row its own id")
        seen.add(item.id)
    if kinds == {Row}:
        data.rows = [i for i in items if isinstance(i, Row)]
    else:
        data.kind = "pairs"
        data.pairs = [i for i in items if isinstance(i, Pair)]
    return data


# --------------------------------------------------------------------------- protocol checks


def _need_splits(data: FitData, needed: Sequence[str], why: str) -> None:
    unsplit = [r for r in data.rows if r.split is None] + [p for p in data.pairs if p.split is None]
    for s in needed:
        if not data.split_rows(s) and not data.split_pairs(s):
            detail = (
                " (the rows carry no 'split' field)"
                if unsplit and not data.splits
                else f" (present: {', '.join(data.splits) or 'none'})"
            )
            raise FitError(
                f"the data has no {s!r} split{detail}; {why}",
                code="FIT_SPLIT_MISSING",
                hint=f"give rows for the splits {', '.join(needed)} "
                "(files <split>_data.json, or a 'split' field)",
            )


def _one_label(where: str, missing: int, what: str) -> FitError:
    return FitError(
        f"{where} has no label-{missing} rows; {what}",
        code="FIT_DOMAIN_ONE_LABEL",
        hint="add rows of both labels (1 and 0), or drop the domain",
    )


def check_asa_data(data: FitData, domains: Sequence[str] | None = None) -> list[str]:
    """Check labelled data against the ASA protocol; return the domains in router order.

    The order is ``domains`` when given (it must name exactly the train
    split's domains), else the first-seen order of the train split.
    """
    if data.kind != "labelled":
        raise _invalid(
            "the asa protocol needs labelled prompts, the data holds contrastive pairs",
            None,
            'rows {"id", "domain", "label", "instruction"}; pairs fit the kinds always and condition',
        )
    _need_splits(
        data,
        SPLITS,
        "the asa protocol uses cal (vectors), train (estimators), "
        "valid (layer and tau) and test (scores)",
    )
    train = data.split_rows("train")
    order = list(dict.fromkeys(r.domain for r in train))
    if domains is not None:
        given = list(domains)
        if len(set(given)) != len(given) or set(given) != set(order):
            raise _invalid(
                f"the domain order {given} does not name exactly the train split's domains {order}",
                None,
                "list every domain of the train split once",
            )
        order = given
    if len(order) < 2:
        raise FitError(
            f"the train split has {len(order)} domain(s) ({', '.join(order) or 'none'}); the router "
            "chooses between at least 2",
            code="FIT_TOO_FEW_DOMAINS",
            hint="add a second domain, or fit an 'always' or 'condition' intervention instead",
        )
    for split in SPLITS:
        rows = data.split_rows(split)
        unknown = sorted({r.domain for r in rows} - set(order))
        if unknown:
            raise _invalid(
                f"the {split} split has domains {unknown} that the train split lacks",
                None,
                "every domain needs train rows (the router and probes are fitted on them)",
            )
    for split, what in (
        ("cal", "its steering vector is mean(label 1) - mean(label 0) on cal"),
        ("train", "its probe is fitted on train rows of both labels"),
    ):
        rows = data.split_rows(split)
        for d in order:
            labels = {r.label for r in rows if r.domain == d}
            for missing in (0, 1):
                if missing not in labels:
                    raise _one_label(f"domain {d!r} in the {split} split", missing, what)
    for split, what in (
        ("valid", "the layer sweep's ROC AUC and the tau sweep's F1 need both labels"),
        ("test", "the test scores (F1, precision, recall, false-positive rate) need both labels"),
    ):
        labels = {r.label for r in data.split_rows(split)}
        for missing in (0, 1):
            if missing not in labels:
                raise _one_label(f"the {split} split", missing, what)
    return order


def check_contrastive_data(data: FitData, kind: str, method: str) -> str | None:
    """Check data for an ``always`` or ``condition`` fit; return the split fitted on.

    ``always`` fits on the train split when the data has splits, else on every
    row; ``condition`` needs train (directions) and valid (threshold).
    """
    if kind == "condition":
        _need_splits(
            data,
            ("train", "valid"),
            "a condition gate is fitted on train and its threshold chosen on valid",
        )
        fit_split: str | None = "train"
    else:
        fit_split = "train" if data.splits else None
        if fit_split is not None:
            _need_splits(data, ("train",), "an always intervention is fitted on the train split")
    if method == "pca_center" and data.kind != "pairs":
        raise _invalid(
            "method pca_center centres each positive/negative pair; the data holds labelled prompts",
            None,
            'give {"positive", "negative"} pairs, or use the mean_diff method',
        )
    splits = [fit_split] + (["valid"] if kind == "condition" else [])
    for split in splits:
        if data.kind == "labelled":
            labels = {r.label for r in data.split_rows(split)}
            for missing in (0, 1):
                if missing not in labels:
                    where = f"the {split} split" if split else "the data"
                    raise _one_label(where, missing, "a direction is a difference between labels")
        elif not data.split_pairs(split):  # pragma: no cover - _need_splits covers it
            raise FitError("no pairs", code="FIT_SPLIT_MISSING")
    return fit_split
