"""The pieces of ``asa fit`` on small inputs: data rules, choice rules, rendering, cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import transformers

from asa_format.converters.fit_cache import read_cache, write_cache
from asa_format.converters.fit_data import load_data
from asa_format.converters.fit_hidden import HiddenStates
from asa_format.converters.fit_model import Renderer
from asa_format.converters.fit_protocol import choose_layer, tau_sweep
from asa_format.errors import FitError

pytestmark = [pytest.mark.runtime, pytest.mark.convert]


def _row(i: int, split: str | None = "train", **kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": f"r{i}",
        "domain": "a",
        "label": i % 2,
        "instruction": f"text {i}",
    }
    if split is not None:
        row["split"] = split
    row.update(kw)
    return row


def _jsonl(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("rows", "word"),
    [
        ([_row(0), _row(1, split=None)], "split"),
        ([_row(0), {"positive": "a", "negative": "b", "split": "train"}], "mixes"),
        ([_row(0, split="holdout")], "holdout"),
        ([_row(0, label=True)], "label"),
        ([_row(0, label=1.0)], "label"),
        ([_row(0, domain="")], "domain"),
        ([_row(0, instruction=5)], "instruction"),
    ],
)
def test_malformed_rows_are_refused(
    tmp_path: Path, rows: list[dict[str, object]], word: str
) -> None:
    with pytest.raises(FitError) as info:
        load_data(_jsonl(tmp_path, rows))
    assert info.value.code == "FIT_DATA_INVALID" and word in info.value.message


def test_data_files_are_read_strictly(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train_data.json").write_text('{"not": "a list"}')
    with pytest.raises(FitError, match="not a list"):
        load_data(tmp_path / "d")
    (tmp_path / "d" / "train_data.json").write_text('[{"id": 1, "id": 2}]')
    with pytest.raises(FitError, match="not valid JSON"):
        load_data(tmp_path / "d")
    real = _jsonl(tmp_path, [_row(0)])
    os.symlink(real, tmp_path / "link.jsonl")
    with pytest.raises(FitError, match="symbolic link"):
        load_data(tmp_path / "link.jsonl")
    with pytest.raises(FitError) as info:
        load_data(tmp_path / "empty-dir-does-not-exist")
    assert info.value.code == "FIT_DATA_INVALID"


def test_the_data_digest_ignores_formatting(tmp_path: Path) -> None:
    rows = [_row(i) for i in range(4)]
    a = _jsonl(tmp_path, rows)
    b = tmp_path / "b.json"
    b.write_text(json.dumps(rows, indent=4))
    assert load_data(a).digest == load_data(b).digest
    rows[2]["label"] = 1 - int(rows[2]["label"])  # type: ignore[call-overload]
    c = tmp_path / "c.json"
    c.write_text(json.dumps(rows))
    assert load_data(c).digest != load_data(a).digest


def test_the_layer_is_the_deepest_within_the_margin() -> None:
    assert choose_layer([0.5, 0.90, 0.896, 0.80]) == 2  # 0.896 >= 0.90 - 0.005
    assert choose_layer([0.5, 0.90, 0.894, 0.80]) == 1
    assert choose_layer([0.9, 0.9, 0.9]) == 2


def test_tau_is_the_first_with_the_best_f1() -> None:
    y = np.array([1, 1, 0, 0])
    prob = np.array([0.9, 0.62, 0.58, 0.1])
    rows, tau = tau_sweep(prob, y)
    # 0.50 and 0.55: one false positive; 0.60: perfect; 0.65 and 0.70: one miss
    assert [round(r["f1"], 4) for r in rows] == [0.8, 0.8, 1.0, 0.6667, 0.6667]
    assert tau == 0.6
    rows, tau = tau_sweep(np.array([0.9, 0.8, 0.1, 0.2]), y)
    assert tau == 0.5  # every tau ties: the first


def _bos_tokenizer() -> transformers.PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<s>": 0, "<unk>": 1, "<user>": 2, "<assistant>": 3, "hello": 4, "</s>": 5}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 0)]
    )
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", unk_token="<unk>"
    )
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    return tok


def test_rendering_after_the_chat_template() -> None:
    tok = _bos_tokenizer()
    ours = Renderer.for_instructions(tok, None)
    notebook = Renderer.for_instructions(tok, None, add_special_tokens=True)
    assert ours.encode("hello") == [0, 2, 4, 3]  # the template's BOS only, as asa run encodes
    assert notebook.encode("hello") == [0, 0, 2, 4, 3]  # the reference notebook's second BOS
    assert ours.doubles_specials("hello") == 1
    assert ours.describe()["add_special_tokens"] is False and ours.key() != notebook.key()
    with pytest.raises(FitError) as info:
        Renderer.for_instructions(tok, "system text", raw=True)
    assert info.value.code == "FIT_NO_CHAT_TEMPLATE"
    raw = Renderer.for_instructions(tok, None, raw=True)
    assert raw.mode == "raw" and raw.encode("hello") == [0, 4]


def test_a_cache_entry_is_used_only_for_its_key(tmp_path: Path) -> None:
    states = HiddenStates(last=np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    key = {"model": "x", "prompts": "y"}
    assert write_cache(tmp_path, key, states) is None
    got, note = read_cache(tmp_path, key, (2, 3), with_mean=False)
    assert got is not None and note is None and np.array_equal(got.last, states.last)
    assert read_cache(tmp_path, {**key, "prompts": "z"}, (2, 3), False) == (None, None)
    got, note = read_cache(tmp_path, key, (2, 4), with_mean=False)  # wrong shape: not trusted
    assert got is None and note is not None and "recomputed" in note
    (entry,) = list(tmp_path.iterdir())
    entry.write_bytes(entry.read_bytes()[:-10])  # truncated: not trusted
    got, note = read_cache(tmp_path, key, (2, 3), with_mean=False)
    assert got is None and note is not None
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]  # no temporary files left
