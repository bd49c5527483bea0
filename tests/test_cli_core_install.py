"""The commands on a core install (``pip install asa-format``, no extras).

Every command runs in a subprocess whose interpreter cannot import torch,
transformers, scikit-learn, skl2onnx, gguf or huggingface_hub: a ``sitecustomize`` module on
PYTHONPATH puts an import blocker first on ``sys.meta_path``, as if those
packages were not installed.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "examples" / "asa_assets"
VALID = ROOT / "spec" / "conformance" / "valid" / "minimal_two_domains" / "bundle"

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = {"torch", "transformers", "sklearn", "skl2onnx", "gguf", "huggingface_hub"}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
    """
)


@pytest.fixture(scope="module")
def core_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("core-site")
    (site / "sitecustomize.py").write_text(BLOCKER)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}


def run(
    env: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def test_the_blocker_works(core_env: dict[str, str]) -> None:
    result = run(core_env, "-c", "import torch")
    assert result.returncode == 1 and "No module named 'torch'" in result.stderr


ASA = ("-m", "asa_format.cli")
CONVERT = ("-m", "asa_format.cli.convert")


@pytest.mark.parametrize(
    "argv",
    [
        (*ASA,),
        (*ASA, "--help"),
        (*ASA, "-h"),
        (*ASA, "--version"),
        (*ASA, "run", "--help"),
        (*ASA, "convert", "--help"),
        (*ASA, "validate", "--help"),
        (*ASA, "inspect", "--help"),
        (*ASA, "sign", "--help"),
        (*ASA, "verify", "--help"),
        (*ASA, "import", "--help"),
        (*ASA, "export", "--help"),
        (*ASA, "fit", "--help"),
        (*CONVERT, "--help"),
        (*CONVERT, "-h"),
        (*CONVERT, "--version"),
    ],
    ids=lambda argv: (
        " ".join(argv[1:])
        .replace("asa_format.cli.convert", "asa-convert")
        .replace("asa_format.cli", "asa")
    ),
)
def test_help_and_version_work_without_extras(
    core_env: dict[str, str], argv: tuple[str, ...]
) -> None:
    result = run(core_env, *argv)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and result.stderr == ""
    assert ("Usage:" in result.stdout) or ("version 0." in result.stdout)


def test_run_help_lists_its_options(core_env: dict[str, str]) -> None:
    out = run(core_env, *ASA, "run", "--help").stdout
    for option in (
        "BUNDLE",
        "--bundle",
        "--model",
        "--prompt",
        "--system",
        "--messages",
        "--dtype",
        "--self-test",
        "--no-strict",
    ):
        assert option in out, option


def test_convert_without_its_extra_names_it_before_reading_input(
    core_env: dict[str, str], tmp_path: Path
) -> None:
    # a source that does not exist: the extra is named first, nothing is read or written
    for argv in (
        (*CONVERT, str(tmp_path / "nowhere"), str(tmp_path / "out")),
        (*ASA, "convert", str(ASSETS), str(tmp_path / "out")),
    ):
        result = run(core_env, *argv)
        assert result.returncode == 2
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert 'pip install "asa-format[convert]"' in lines[0] and "scikit-learn" in lines[0]
        assert result.stdout == ""
        assert list(tmp_path.iterdir()) == []


def test_run_without_its_extra_names_it(core_env: dict[str, str], tmp_path: Path) -> None:
    result = run(
        core_env, *ASA, "run", str(tmp_path / "nowhere"), "--model", str(tmp_path), "--prompt", "hi"
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert 'pip install "asa-format[runtime]"' in lines[0] and "torch" in lines[0]


def test_export_without_its_extra_names_it_before_reading_input(
    core_env: dict[str, str], tmp_path: Path
) -> None:
    result = run(core_env, *ASA, "export", str(VALID), str(tmp_path / "out.gguf"), "--to", "gguf")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert 'pip install "asa-format[interop]"' in lines[0] and "gguf" in lines[0]
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_fit_without_its_extras_names_them_before_reading_input(
    core_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run(
        core_env, *ASA, "fit", "--model", str(tmp_path), "--data", str(tmp_path), "--out", str(out)
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert 'pip install "asa-format[convert]"' in lines[0] and result.stdout == ""
    assert not out.exists()


def test_import_of_a_gguf_file_needs_no_extra_export_names_it(
    core_env: dict[str, str], tmp_path: Path
) -> None:
    """GGUF is read by asa-format's own bounded reader; only writing one needs gguf."""
    sys.path.insert(0, str(ROOT / "tests"))
    from gguf_bytes import gguf_file

    source = tmp_path / "cv.gguf"
    source.write_bytes(gguf_file())
    result = run(core_env, *ASA, "import", str(source), str(tmp_path / "out"), "--num-layers", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    hostile = tmp_path / "hostile.gguf"
    hostile.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + bytes(64))
    result = run(core_env, *ASA, "import", str(hostile), str(tmp_path / "no"), "--num-layers", "4")
    assert result.returncode == 1 and "IMPORT_UNKNOWN_KIND" in result.stdout, result.stdout
    assert not (tmp_path / "no").exists()
    result = run(
        core_env, *ASA, "export", str(tmp_path / "out"), str(tmp_path / "x.gguf"), "--to", "gguf"
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert 'pip install "asa-format[interop]"' in lines[0]
    assert not (tmp_path / "x.gguf").exists()


def test_python_runtime_import_names_the_extra(core_env: dict[str, str]) -> None:
    result = run(core_env, "-c", "from asa_format.runtime import attach")
    assert result.returncode == 1
    assert 'pip install "asa-format[runtime]"' in result.stderr


def test_core_commands_work_without_extras(core_env: dict[str, str]) -> None:
    for argv in (
        (*ASA, "validate", str(VALID)),
        (*ASA, "inspect", str(VALID)),
        (*ASA, "validate", "--json", str(VALID)),
    ):
        result = run(core_env, *argv)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
