"""Faults and concurrency: nothing half-written, nothing left attached, no cross-talk."""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from asa_format import constants as C
from asa_format import destination, load_bundle, save_bundle, writer
from asa_format.converters.cli import convert_command
from asa_format.converters.convert import convert_legacy
from asa_format.errors import AsaError, DecisionError
from asa_format.runtime import attach, resolve_layers
from asa_format.testing import make_test_contents
from tiny_models import build_model, last_hidden_rows, separating_bundle, token_batch

LEGACY = sorted(p for p in (Path(__file__).parent / "fixtures" / "legacy").iterdir() if p.is_dir())


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not getattr(m, "_forward_hooks_with_kwargs", {})
        for m in model.modules()
    )


# -- writer and converter faults ---------------------------------------------------


@pytest.mark.parametrize(
    ("err", "needle"),
    [(errno.ENOSPC, "No space left on device"), (errno.EACCES, "Permission denied"), (errno.EROFS, "Read-only file system")],
)
def test_writer_io_errors_leave_nothing(err: int, needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = writer._write_file
    calls = {"n": 0}

    def failing(path: Path, data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the first file made it, the second does not
            raise OSError(err, needle)
        real_write(path, data)

    monkeypatch.setattr(writer, "_write_file", failing)
    with pytest.raises(AsaError) as info:
        save_bundle(make_test_contents(), tmp_path / "out")
    assert info.value.code == "IO_ERROR"
    assert needle in str(info.value) and "nothing was written" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_writer_cannot_create_temporary_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> str:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(destination.os, "mkdir", refuse)  # the temporary directory
    with pytest.raises(AsaError) as info:
        save_bundle(make_test_contents(), tmp_path / "out")
    assert info.value.code == "IO_ERROR" and "Permission denied" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nor its owner file


def test_converter_disk_full_is_a_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_write_file", full)
    with pytest.raises(AsaError) as info:
        convert_legacy(LEGACY[0], tmp_path / "out", samples=16)
    assert info.value.code == "IO_ERROR"
    result = CliRunner().invoke(convert_command, [str(LEGACY[0]), str(tmp_path / "out2")])
    assert result.exit_code == 1
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_replacing_with_force_keeps_old_bundle_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = save_bundle(make_test_contents(seed=1), tmp_path / "b")
    before = {p.name: p.read_bytes() for p in dest.iterdir()}

    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "_write_file", full)
    with pytest.raises(AsaError):
        save_bundle(make_test_contents(seed=2), dest, force=True)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


# -- runtime faults -------------------------------------------------------------------


def test_broken_decision_leaves_model_unaltered(tmp_path: Path) -> None:
    model = build_model("llama", seed=1)
    n_layers = len(resolve_layers(model))
    bundle = load_bundle(save_bundle(make_test_contents(hidden_size=32, model_type="llama", num_layers=n_layers), tmp_path / "b"))
    ids, mask = token_batch([[5, 6, 7], [8, 9]], side="left")
    with torch.no_grad():
        baseline = model(input_ids=ids, attention_mask=mask).logits.clone()

    class BrokenSession:
        def run(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("session crashed")

    bundle._plan = None  # use the sessions, and break them
    bundle._sessions = {name: BrokenSession() for name in bundle._sessions}
    with pytest.raises(DecisionError) as info, attach(model, bundle):
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    assert info.value.code == "DECISION_FAILED" and "session crashed" in str(info.value)
    assert _no_hooks(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, baseline)


# -- concurrency --------------------------------------------------------------------------

PROMPTS = {"search": [5, 6, 7, 8, 9], "math": [10, 11, 12, 13], "mixed": [5, 11, 7, 13, 20, 21], "short": [30, 31]}


def _generate(model: Any, row: list[int]) -> tuple[list[int], np.ndarray]:
    ids, mask = token_batch([row])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False,
            pad_token_id=0, return_dict_in_generate=True, output_logits=True,
        )
    return out.sequences[0].tolist(), torch.stack(list(out.logits)).numpy()


def test_eight_threads_twenty_generations_each(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model = build_model("llama", seed=3)
    layers = resolve_layers(model)
    centroids = {}
    for domain in ("search", "math"):
        ids, mask = token_batch([PROMPTS[domain]])
        centroids[domain] = last_hidden_rows(model, layers.layers[1], ids, mask)[0].astype(np.float64)
    bundle = load_bundle(
        separating_bundle(tmp_path / "b", centroids, layer=1, alpha=3.0, tau=0.7,
                          policy=C.POLICY_ALL_TOKENS, model_type="llama", num_layers=len(layers))
    )
    with attach(model, bundle) as handle:
        alone = {}
        for name, row in PROMPTS.items():
            tokens, logits = _generate(model, row)
            alone[name] = (tokens, logits, handle.last.rows[0])
        assert len({r[2].gate for r in alone.values()}) >= 2, "the mixture must exercise different gates"

        results: list[tuple[str, list[int], np.ndarray, Any]] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        names = list(PROMPTS)

        def worker(t: int) -> None:
            try:
                for i in range(20):
                    name = names[(t + i) % len(names)]
                    tokens, logits = _generate(model, PROMPTS[name])
                    with lock:
                        results.append((name, tokens, logits, None))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=300)
        assert not errors, errors
        assert len(results) == 160
        for name, tokens, logits, _ in results:
            assert tokens == alone[name][0], name
            np.testing.assert_allclose(logits, alone[name][1], rtol=1e-5, atol=1e-5)
        # every generation was recorded once, with its own decision
        records = list(handle.records)[-160:]
        assert len(records) == 160
        gates_by_prompt = {name: alone[name][2].gate for name in names}
        assert sorted(r.rows[0].gate for r in records) == sorted(gates_by_prompt[name] for name, *_ in results)
    assert _no_hooks(model)
