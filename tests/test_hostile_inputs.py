"""Hostile inputs other than GGUF, from the attacker's side: ``.svec`` files, a model's
``config.json``, model directories, recovery records, and numbers that are finite only
one at a time.

Memory and time bounds are measured in a fresh process (``ru_maxrss`` and CPU
time of a child under an address-space limit), never by timing a call here.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from asa_format import BundleContents, InterventionData, ModelBinding, save_bundle
from asa_format.errors import AsaError, UsageError
from asa_format.format.finite import check_finite_product, finite_product, overflow_threshold
from asa_format.format.manifest import Provenance
from asa_format.interop import ImportBinding, import_file, import_source
from asa_format.interop.svec import MAX_SVEC_BYTES, MAX_SVEC_VALUES
from asa_format.storage.destination import OWNER_SUFFIX, TMP_TAG
from asa_format.storage.inputs import check_model_dir, read_input
from asa_format.storage.writer import check_destination
from asa_format.testing import make_test_contents

ROOT = Path(__file__).resolve().parents[1]
posix = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs and rlimits")


def _code(fn: object) -> str:
    with pytest.raises(AsaError) as info:
        fn()  # type: ignore[operator]
    return info.value.code


def _svec(path: Path, directions: dict[str, list[float]], **extra: object) -> Path:
    path.write_text(json.dumps({"model_type": "llama", "directions": directions, **extra}))
    return path


# -- .svec ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        '{"model_type": "llama", "directions": {"2": [1.0, 2.0], "2": [3.0, 4.0]}}',  # duplicate
        '{"model_type": "llama", "directions": {"2": [1.0, 2.0], "2\\n": [3.0, 4.0]}}',  # alias
        '{"model_type": "llama", "directions": {"2": [1.0, 2.0], " 2": [3.0, 4.0]}}',
        '{"model_type": "llama", "directions": {"2": [1.0, 2.0], "02": [3.0, 4.0]}}',
        '{"model_type": "llama", "directions": {"2": [1.0, 2.0], "\\u0662": [3.0, 4.0]}}',
        '{"model_type": "llama", "directions": {"2": [[1.0], [2.0]]}}',
        '{"model_type": "llama", "directions": {"2": [true, false]}}',
        '{"model_type": "llama", "directions": {"2": [1e39, 1.0]}}',  # finite, over float32
        '{"model_type": "llama", "directions": {"2": [1.0, 2.0]}, "directions": {"3": [1.0]}}',
        '{"model_type": "llama\\n", "directions": {"2": [1.0, 2.0]}}',
        '{"model_type": ["llama"], "directions": {"2": [1.0, 2.0]}}',
        '{"model_type": "llama", "directions": {"2": []}}',
        '{"model_type": "llama", "directions": {"100000": [1.0]}}',
    ],
)
def test_hostile_svec_is_refused(tmp_path: Path, raw: str) -> None:
    src = tmp_path / "h.svec"
    src.write_text(raw)
    assert _code(lambda: import_file(src, tmp_path / "b")) == "IMPORT_INVALID"
    assert not (tmp_path / "b").exists()


def test_svec_explained_variances_with_odd_keys_are_dropped_not_kept(tmp_path: Path) -> None:
    src = _svec(
        tmp_path / "v.svec",
        {"3": [0.5, 0.5]},
        explained_variances={"3\n": 0.5, "x": 0.1},
    )
    meta = import_source(src).provenance.metadata  # type: ignore[union-attr]
    assert "explained_variances" not in meta and "explained_variances_dropped" in meta
    good = _svec(tmp_path / "g.svec", {"3": [0.5, 0.5]}, explained_variances={"3": 0.5})
    assert import_source(good).provenance.metadata["explained_variances"] == {"3": 0.5}  # type: ignore[union-attr]


def test_svec_value_count_is_capped_before_parsing(tmp_path: Path) -> None:
    src = tmp_path / "many.svec"
    src.write_bytes(
        b'{"model_type": "llama", "directions": {"2": [' + b"0," * MAX_SVEC_VALUES + b"0]}}"
    )
    assert src.stat().st_size < MAX_SVEC_BYTES
    with pytest.raises(AsaError) as info:
        import_source(src)
    assert info.value.code == "IMPORT_INVALID" and "values" in info.value.message


_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    resource.setrlimit(resource.RLIMIT_CPU, (120, 120))
    from asa_format.errors import AsaError
    from asa_format.interop import import_source
    before = resource.getrusage(resource.RUSAGE_SELF)
    codes = []
    for path in sys.argv[1:]:
        try:
            import_source(path)
            codes.append("ok")
        except AsaError as exc:
            codes.append(exc.code)
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"codes": codes, "rss0_kib": before.ru_maxrss, "rss_kib": after.ru_maxrss,
                      "cpu_s": cpu}))
    """
)


def _measure(paths: list[Path]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, paths)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc


@posix
def test_a_sparse_300_mib_svec_and_a_value_flood_cost_little_memory(tmp_path: Path) -> None:
    """A sparse 300 MiB .svec (it reached 2.8 GB) is refused from its size alone; a 60 MB file
    of 30M values is refused by the count before parsing. The child's peak memory grows by
    less than 200 MiB (the flood file itself is read: 60 MB), its CPU time stays under 10 s."""
    sparse = tmp_path / "sparse.svec"
    with open(sparse, "wb") as fh:
        fh.write(b'{"model_type": "llama", "directions": {"2": [')
        fh.truncate(300 << 20)
    flood = tmp_path / "flood.svec"
    flood.write_bytes(
        b'{"model_type": "llama", "directions": {"2": [' + b"0," * 30_000_000 + b"0]}}"
    )
    good = _svec(tmp_path / "good.svec", {"2": [0.5] * 8})
    doc = _measure([good, sparse, flood])
    assert doc["codes"] == ["ok", "INPUT_TOO_LARGE", "IMPORT_INVALID"], doc
    grown_mib = (int(doc["rss_kib"]) - int(doc["rss0_kib"])) / 1024  # type: ignore[call-overload]
    assert grown_mib < 200, doc
    assert float(doc["cpu_s"]) < 10.0, doc  # type: ignore[arg-type]


# -- paths that are not regular files ----------------------------------------------------------


@posix
def test_inputs_that_are_fifos_devices_or_directories_fail_fast(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    link_to_zero = tmp_path / "zero-link"
    link_to_zero.symlink_to("/dev/zero")
    try:
        for path in (fifo, sock_path, Path("/dev/zero"), link_to_zero, tmp_path):
            assert (
                _code(lambda path=path: read_input(path, what="x", cap=10)) == "INPUT_NOT_REGULAR"
            )
        big = tmp_path / "big"
        big.write_bytes(b"x" * 11)
        assert _code(lambda: read_input(big, what="x", cap=10)) == "INPUT_TOO_LARGE"
        assert read_input(big, what="x", cap=11) == b"x" * 11
        link = tmp_path / "link"
        link.symlink_to(big)
        assert read_input(link, what="x", cap=11) == b"x" * 11
        assert (
            _code(lambda: read_input(link, what="x", cap=11, follow_links=False))
            == "INPUT_NOT_REGULAR"
        )
        for value in (None, 3, b"bytes", "", "a\x00b"):
            with pytest.raises(UsageError):
                read_input(value, what="x", cap=1)  # type: ignore[arg-type]
    finally:
        sock.close()


@posix
def test_a_models_config_json_that_is_a_fifo_or_huge_is_refused(tmp_path: Path) -> None:
    src = _svec(tmp_path / "v.svec", {"2": [0.5] * 4})
    model = tmp_path / "model"
    model.mkdir()
    os.mkfifo(model / "config.json")
    binding = ImportBinding(model_dir=model)
    assert _code(lambda: import_file(src, tmp_path / "b", binding)) == "INPUT_NOT_REGULAR"
    assert _code(lambda: check_model_dir(model)) == "INPUT_NOT_REGULAR"
    os.unlink(model / "config.json")
    (model / "config.json").symlink_to("/dev/zero")
    assert _code(lambda: import_file(src, tmp_path / "b", binding)) == "INPUT_NOT_REGULAR"
    os.unlink(model / "config.json")
    with open(model / "config.json", "wb") as fh:
        fh.truncate(5 << 20)
    assert _code(lambda: import_file(src, tmp_path / "b", binding)) == "INPUT_TOO_LARGE"
    assert _code(lambda: check_model_dir(model)) == "INPUT_TOO_LARGE"
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4}))
    os.mkfifo(model / "tokenizer.json")  # transformers would open it: refused before
    assert _code(lambda: check_model_dir(model)) == "INPUT_NOT_REGULAR"
    os.unlink(model / "tokenizer.json")
    blob = tmp_path / "blob"
    blob.write_text("{}")
    (model / "tokenizer.json").symlink_to(blob)  # the hub cache's layout: links to blobs
    check_model_dir(model)
    assert not (tmp_path / "b").exists()


_MESSAGES_CHILD = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    sys.argv = ["asa", *sys.argv[1:]]
    from asa_format.cli import main
    main()
    """
)


@posix
@pytest.mark.runtime
@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "directory", "huge"])
def test_asa_run_messages_that_is_not_a_small_regular_file_fails_fast(
    tmp_path: Path, kind: str
) -> None:
    from asa_format.testing import make_test_bundle

    bundle = make_test_bundle(tmp_path / "bundle")
    target = {
        "dev_zero": Path("/dev/zero"),
        "fifo": tmp_path / "fifo",
        "directory": tmp_path,
        "huge": tmp_path / "huge.json",
    }[kind]
    if kind == "fifo":
        os.mkfifo(target)
    if kind == "huge":
        with open(target, "wb") as fh:
            fh.truncate(64 << 20)
    proc = subprocess.run(
        [sys.executable, "-m", "asa_format.cli", "run", "--model", str(tmp_path / "no-model"),
         str(bundle), "--messages", str(target), "--prompt", "hi"],
        capture_output=True, text=True, timeout=180, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert "Traceback" not in proc.stderr
    assert proc.returncode in (1, 2), proc.stderr
    if kind == "directory":  # click's own check of the option (dir_okay=False): a usage error
        assert proc.returncode == 2 and "is a directory" in proc.stderr, proc.stderr
        return
    code = "INPUT_TOO_LARGE" if kind == "huge" else "INPUT_NOT_REGULAR"
    assert f"[{code}]" in proc.stderr, (proc.stdout, proc.stderr)


# -- recovery records ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        {"pid": 10**30},
        {"pid": 2**31},
        {"pid": -1},
        {"pid": 0},
        {"pid": True},
        {"pid": "12"},
        {"pid": 1.5},
        {"pid": None},
        {"tmp": 5},
        {"phase": ["swap"]},
        {"start": 17},
        {"host": None},
        "not an object",
        b"\xff\xfe not utf-8",
        "[" * 10_000,
        '{"pid": ' + "9" * 5000 + "}",
        "x" * 5000,  # over the size of any record this version writes
    ],
)
def test_a_hostile_recovery_record_is_left_alone_with_a_note(
    tmp_path: Path, record: object
) -> None:
    dest = tmp_path / "out"
    token = "0123456789ab"
    tmp = tmp_path / f".out{TMP_TAG}{token}"
    tmp.mkdir()
    (tmp / "keep").write_text("not ours to delete")
    owner = tmp_path / f".out{TMP_TAG}{token}{OWNER_SUFFIX}"
    valid = {
        "destination": "out",
        "host": socket.gethostname(),
        "old": f".out.asa-old-{token}",
        "phase": "write",
        "pid": 2**22 + 12345,  # a dead pid on any Linux (pid_max <= 2**22)
        "start": None,
        "tmp": tmp.name,
    }
    if isinstance(record, dict):
        owner.write_text(json.dumps({**valid, **record}))
    elif isinstance(record, bytes):
        owner.write_bytes(record)
    else:
        owner.write_text(str(record))
    notes = check_destination(dest)
    assert any("left" in n and "alone" in n for n in notes), notes
    assert (tmp / "keep").exists() and owner.exists()
    # the same record, valid, is recovered: the test could fail
    owner.write_text(json.dumps(valid))
    notes = check_destination(dest)
    assert not tmp.exists() and not owner.exists(), notes


@posix
def test_a_recovery_record_that_is_a_fifo_is_skipped_without_blocking(tmp_path: Path) -> None:
    owner = tmp_path / f".out{TMP_TAG}0123456789ab{OWNER_SUFFIX}"
    os.mkfifo(owner)
    assert check_destination(tmp_path / "out") == []
    assert owner.exists()


# -- finite products -------------------------------------------------------------------------


def test_finite_product_thresholds_are_the_rounding_boundaries() -> None:
    for dtype, top in (("float32", float(np.finfo(np.float32).max)), ("float16", 65504.0)):
        threshold = overflow_threshold(dtype)
        assert threshold > top
        assert finite_product(1.0, np.array([top], np.float32), dtype)
        assert not finite_product(1.0, np.array([threshold], np.float64), dtype)
    assert finite_product(1e6, np.array([1e32], np.float32))
    assert not finite_product(1e6, np.array([1e33], np.float32))
    assert finite_product(1e6, np.array([1e33], np.float32), "float64")
    assert not finite_product(math.nan, np.ones(3, np.float32))
    assert not finite_product(1.0, np.array([1.0, np.inf], np.float32))
    assert not finite_product(2.0, np.array([32760.0], np.float32), "torch.float16")
    assert finite_product(2.0, np.array([32759.0], np.float32), "half")
    with pytest.raises(UsageError):
        finite_product(1.0, np.ones(2), "int8")
    with pytest.raises(AsaError) as info:
        check_finite_product(1e6, np.full(4, 1e33, np.float32), what="x", hint="h")
    assert info.value.code == "VALUE_OVERFLOW"


@pytest.mark.runtime
def test_finite_product_agrees_with_torch_in_every_dtype() -> None:
    import torch

    rng = np.random.default_rng(5)
    compared = {True: 0, False: 0}
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        top = float(torch.finfo(dtype).max)
        for coef in (1.0, -3.0, 1e6, 0.5):
            # values straddling the overflow boundary of the product (those finite in float32)
            with np.errstate(over="ignore"):
                vec = ((top / abs(coef)) * rng.uniform(0.98, 1.02, 64)).astype(np.float32)
            vec = vec[np.isfinite(vec)]  # 0.5 x (twice float32's max) has no float32 vector
            product = torch.from_numpy(vec).to(torch.float32) * coef
            ours = [finite_product(coef, vec[i : i + 1], dtype) for i in range(vec.size)]
            theirs = torch.isfinite(product.to(dtype)).tolist()
            assert ours == theirs, (dtype, coef)
            for finite in ours:
                compared[finite] += 1
    assert min(compared.values()) > 100, compared  # both sides of every boundary were hit


def test_export_refuses_a_product_that_overflows_float32(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from asa_format.interop.export import export_gguf

    big = np.full(4, 1e33, np.float32)
    contents = BundleContents(
        model=ModelBinding(hidden_size=4, type="llama"),
        interventions=[InterventionData("loud", {1: big}, coefficient=1e6)],
    )
    bundle = save_bundle(contents, tmp_path / "b")
    with pytest.raises(AsaError) as info:
        export_gguf(bundle, tmp_path / "x.gguf")
    assert info.value.code == "VALUE_OVERFLOW"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    # two vectors each finite, their sum is not
    two = BundleContents(
        model=ModelBinding(hidden_size=4, type="llama"),
        interventions=[
            InterventionData("a", {1: np.full(4, 3e38, np.float32)}),
            InterventionData("b", {1: np.full(4, 3e38, np.float32)}),
        ],
    )
    b2 = save_bundle(two, tmp_path / "b2")
    with pytest.raises(AsaError) as info:
        export_gguf(b2, tmp_path / "y.gguf")
    assert info.value.code == "VALUE_OVERFLOW"
    assert not (tmp_path / "y.gguf").exists()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e7, "2", None, True, 10**400])
def test_non_finite_or_wrong_coefficients_are_coded_usage_errors(
    tmp_path: Path, value: object
) -> None:
    contents = BundleContents(
        model=ModelBinding(hidden_size=2),
        interventions=[InterventionData("x", {1: np.ones(2, np.float32)}, coefficient=value)],  # type: ignore[arg-type]
    )
    with pytest.raises(AsaError) as info:
        save_bundle(contents, tmp_path / "b")
    if value != 1e7:  # 1e7 is finite: the schema's range refuses it when the bundle is checked
        assert isinstance(info.value, UsageError), info.value
    assert not (tmp_path / "b").exists()
    src = _svec(tmp_path / "v.svec", {"2": [0.5, 0.5]})
    with pytest.raises(UsageError):
        import_source(src, coefficient=value)  # type: ignore[arg-type]


def test_non_finite_steering_and_metadata_are_coded_usage_errors(tmp_path: Path) -> None:
    import dataclasses

    base = make_test_contents()
    for steering in (
        dataclasses.replace(base.steering, alpha=math.nan),
        dataclasses.replace(base.steering, tau=math.inf),
    ):
        with pytest.raises(UsageError):
            save_bundle(dataclasses.replace(base, steering=steering), tmp_path / "b")
    bad_meta = dataclasses.replace(
        base, provenance=Provenance(source="other", metadata={"x": [1.0, math.nan]})
    )
    with pytest.raises(UsageError, match="metadata"):
        save_bundle(bad_meta, tmp_path / "b")
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "1e7"])
def test_asa_import_coefficient_that_is_not_finite_exits_2_without_a_traceback(
    tmp_path: Path, value: str
) -> None:
    src = _svec(tmp_path / "v.svec", {"2": [0.5, 0.5]})
    proc = subprocess.run(
        [sys.executable, "-m", "asa_format.cli", "import", str(src), str(tmp_path / "b"),
         "--coefficient", value],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "[USAGE]" in proc.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "option",
    [
        ("--model-type", "llama\n"),
        ("--model-id", "org/m\n"),
        ("--name", "honesty\n"),
        ("--name", ""),
        ("--model-type", "x" * 129),
    ],
)
def test_asa_import_options_ending_in_a_newline_are_usage_errors(
    tmp_path: Path, option: tuple[str, str]
) -> None:
    src = _svec(tmp_path / "v.svec", {"2": [0.5, 0.5]})
    proc = subprocess.run(
        [sys.executable, "-m", "asa_format.cli", "import", str(src), str(tmp_path / "b"), *option],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "[USAGE]" in proc.stderr
    assert not (tmp_path / "b").exists()
