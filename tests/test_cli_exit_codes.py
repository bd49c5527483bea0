"""One exit-code table and one JSON document for every command (docs/cli.md).

Every command is driven through each exit class: 0 ok, 1 refused input (a
missing path included, with a report), 2 usage or environment, 130 / 143 on
SIGINT / SIGTERM. With ``--json`` stdout must hold exactly one JSON document,
the envelope of ``asa_format.cli.report``, whatever the outcome; stderr never
holds a traceback. The commands run in process through the entry point's
``run_main`` (what the console scripts call), a signal is raised inside the
running command; the start-up window is checked in a fresh process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import pytest

from asa_format.cli import main as asa_main
from asa_format.cli import support as cli_support
from asa_format.testing import make_test_bundle

ROOT = Path(__file__).resolve().parents[1]
GOOD = ROOT / "spec" / "conformance" / "valid" / "minimal_two_domains" / "bundle"
ASSETS = ROOT / "examples" / "asa_assets"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
EXIT = {"ok": 0, "refused": 1, "usage": 2, "environment": 2, "SIGINT": 130, "SIGTERM": 143}


def run(
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    main: Callable[[list[str]], Any] = asa_main,
) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Aborted!" not in err, err
    code = info.value.code
    assert isinstance(code, int)
    return code, out, err


def envelope(out: str, command: str) -> dict[str, Any]:
    """The one JSON document on stdout, checked against the envelope's shape."""
    doc = json.loads(out)  # raises if stdout holds anything besides one document
    assert isinstance(doc, dict)
    assert set(doc) == {"asa_format_version", "command", "ok", "summary", "results"}
    assert doc["command"] == command
    results = doc["results"]
    assert isinstance(results, list) and results
    assert doc["summary"] == {
        "checked": len(results),
        "ok": sum(r["ok"] for r in results),
        "failed": sum(not r["ok"] for r in results),
    }
    assert doc["ok"] is all(r["ok"] for r in results)
    for result in results:
        assert {"path", "ok", "problems", "warnings"} <= set(result)
        assert result["ok"] is (not result["problems"])
        for problem in result["problems"]:
            assert set(problem) == {"code", "file", "message", "hint"}
            assert problem["code"] in cli_support_codes()
    return doc


def cli_support_codes() -> set[str]:
    from asa_format.errors import CODES

    return set(CODES)


# --------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, tuple[Path, Path]]) -> Path:
    """Inputs every command needs: a signed bundle, a control vector, garbage key."""
    from asa_format.interop.gguf_cv import write_control_vector
    from asa_format.signing import load_private_key, sign_bundle

    d = tmp_path_factory.mktemp("exit-codes")
    signed = make_test_bundle(d / "signed")
    sign_bundle(signed, load_private_key(keys["alice"][0]))
    rng = np.random.default_rng(0)
    write_control_vector(
        d / "cv.gguf",
        "llama",
        {b: rng.standard_normal(16).astype(np.float32) for b in (1, 2)},
    )
    (d / "garbage.pem").write_text("not a key")
    return d


def missing_extra(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    real = cli_support.missing_modules
    monkeypatch.setattr(
        cli_support,
        "missing_modules",
        lambda names: [n for n in names if n == module] or real(names),
    )


def cases(work: Path, tmp: Path, keys: dict[str, tuple[Path, Path]]) -> dict[str, dict[str, Any]]:
    """command -> exit class -> argument list (or (arguments, setup) for the environment)."""
    private, public = (str(p) for p in keys["alice"])
    signed, missing = str(work / "signed"), str(tmp / "missing")
    fresh = tmp / "to-sign"
    shutil.copytree(GOOD, fresh)
    imported = tmp / "imported"
    return {
        "validate": {"ok": [str(GOOD)], "refused": [missing], "usage": ["--no-such-flag", signed]},
        "inspect": {"ok": [str(GOOD)], "refused": [missing], "usage": ["--no-such-flag", signed]},
        "verify": {
            "ok": [signed, "--public-key", public],
            "refused": [missing, "--public-key", public],
            "usage": [signed],  # no --public-key
            "environment": [signed, "--public-key", str(work / "garbage.pem")],
        },
        "sign": {
            "ok": [str(fresh), "--private-key", private],
            "refused": [missing, "--private-key", private],
            "usage": [signed],  # no --private-key
            "environment": [signed, "--private-key", str(work / "garbage.pem")],
        },
        "import": {
            "ok": [str(work / "cv.gguf"), str(imported), "--num-layers", "4"],
            "refused": [missing, str(tmp / "never")],
            "usage": [str(work / "cv.gguf"), str(tmp / "never"), "--coefficient", "strong"],
            # no environment class: GGUF is read by the project's own bounded reader, so
            # import needs no extra (test_import_needs_no_gguf_package below)
        },
        "export": {
            "ok": [
                signed,
                str(tmp / "out.gguf"),
                "--to",
                "gguf",
                "--domain",
                "math",
                "--sign",
                "+1",
            ],
            "refused": [missing, str(tmp / "never.gguf"), "--to", "gguf"],
            "usage": [signed, str(tmp / "never.gguf")],  # no --to
            "environment": ([signed, str(tmp / "never.gguf"), "--to", "gguf"], "gguf"),
        },
    }


def test_import_needs_no_gguf_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], work: Path, tmp_path: Path
) -> None:
    """A GGUF control vector imports with ggml's gguf package not installed (exit 0)."""
    missing_extra(monkeypatch, "gguf")
    code, out, err = run(
        capsys, ["import", str(work / "cv.gguf"), str(tmp_path / "b"), "--num-layers", "4"]
    )
    assert code == 0, (out, err)


def _gguf_reader_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """import checks the extra only once it knows the file is GGUF: the reader says so."""
    from asa_format.errors import UsageError
    from asa_format.interop import gguf_cv

    def no_gguf() -> Any:
        raise UsageError(
            'reading or writing GGUF needs gguf, which is not installed: pip install "asa-format[interop]"',
            code="EXTRA_MISSING",
        )

    monkeypatch.setattr(gguf_cv, "_gguf", no_gguf)


COMMANDS = ("validate", "inspect", "verify", "sign", "import", "export")


@pytest.mark.interop  # import / export need the gguf package (the interop extra)
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("as_json", [True, False])
def test_every_command_through_every_exit_class(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    work: Path,
    keys: dict[str, tuple[Path, Path]],
    command: str,
    as_json: bool,
) -> None:
    table = cases(work, tmp_path, keys)[command]
    for klass in ("ok", "refused", "usage", "environment"):
        if klass not in table:
            continue
        with monkeypatch.context() as patch:
            args = table[klass]
            if isinstance(args, tuple):
                args, module = args
                missing_extra(patch, module)
                _gguf_reader_missing(patch)
            extra = ["--json"] if as_json else []
            code, out, err = run(capsys, [command, *args, *extra])
        assert code == EXIT[klass], (command, klass, out, err)
        if as_json:
            doc = envelope(out, command)
            assert doc["ok"] is (klass == "ok")
            if klass == "refused":
                first = doc["results"][0]["problems"][0]
                assert first["code"] in {"BUNDLE_NOT_FOUND", "SOURCE_NOT_FOUND"}, first
                assert doc["results"][0]["path"] == str(tmp_path / "missing")
            if klass == "usage":
                assert doc["results"][0]["problems"][0]["code"] == "USAGE"
            if klass == "environment":
                codes = {p["code"] for p in doc["results"][0]["problems"]}
                assert codes & {"EXTRA_MISSING", "SIGNATURE_KEY_INVALID"}, codes
        else:
            if klass == "refused":  # a report on stdout names the missing path
                assert "FAIL" in out and str(tmp_path / "missing") in out
                assert "NOT_FOUND" in out
            if klass in ("usage", "environment"):
                assert err.startswith(("error:", "Usage:")), err
            if out:
                with pytest.raises(json.JSONDecodeError):
                    json.loads(out)  # text mode prints text


@pytest.mark.interop
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("signal_name", "raised"), [("SIGINT", KeyboardInterrupt), ("SIGTERM", cli_support.Terminated)]
)
def test_a_signal_while_a_command_runs(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    work: Path,
    keys: dict[str, tuple[Path, Path]],
    command: str,
    signal_name: str,
    raised: type[BaseException],
) -> None:
    """SIGINT raises KeyboardInterrupt and SIGTERM Terminated in the main thread (run_main's
    handlers); here they are raised where the signal would interrupt the command."""
    real = click.Command.invoke

    def interrupted(self: click.Command, ctx: click.Context) -> Any:
        if self.name == command:
            raise raised()
        return real(self, ctx)

    monkeypatch.setattr(click.Command, "invoke", interrupted)
    args = cases(work, tmp_path, keys)[command]["ok"]
    code, out, err = run(capsys, [command, *args, "--json"])
    assert code == EXIT[signal_name]
    assert ("interrupted" if signal_name == "SIGINT" else "terminated") in err
    doc = envelope(out, command)
    assert [p["code"] for p in doc["results"][0]["problems"]] == ["INTERRUPTED"]
    code, out, err = run(capsys, [command, *args])
    assert code == EXIT[signal_name] and out == ""


def test_an_unexpected_failure_prints_one_document(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import asa_format.validate as validate

    def broken(path: Any, **kwargs: Any) -> Any:
        raise RuntimeError("nobody expected this")

    monkeypatch.setattr(validate, "validate_bundle", broken)
    code, out, err = run(capsys, ["validate", str(GOOD), "--json"])
    assert code == 1 and err == "error: RuntimeError: nobody expected this\n"
    doc = envelope(out, "validate")
    assert doc["results"][0]["problems"][0]["code"] == "INTERNAL_ERROR"


def test_help_and_version_print_no_error_document(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, ["--version"])
    assert code == 0 and out.startswith("asa, version")
    code, out, _ = run(capsys, ["validate", "--help", "--json"])
    assert code == 0 and out.startswith("Usage:")


# ------------------------------------------------------------------- convert, run


@pytest.mark.convert
def test_convert_through_every_exit_class(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from asa_format.cli.convert import main as convert_main

    table = {
        "ok": [str(ASSETS), str(tmp_path / "b"), "--samples", "64"],
        "refused": [str(tmp_path / "missing"), str(tmp_path / "never")],
        "usage": [str(ASSETS)],  # no destination
    }
    for klass, args in table.items():
        for main, prefix in ((convert_main, []), (asa_main, ["convert"])):
            if klass == "ok":
                shutil.rmtree(tmp_path / "b", ignore_errors=True)
            code, out, err = run(capsys, [*prefix, *args, "--json"], main)
            assert code == EXIT[klass], (klass, out, err)
            doc = envelope(out, "convert")
            assert doc["ok"] is (klass == "ok")
    with monkeypatch.context() as patch:
        missing_extra(patch, "skl2onnx")
        code, out, err = run(capsys, [*table["refused"], "--json"], convert_main)
    assert code == 2 and "asa-format[convert]" in err
    assert envelope(out, "convert")["results"][0]["problems"][0]["code"] == "EXTRA_MISSING"


@pytest.mark.runtime
def test_run_through_every_exit_class(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bundle = str(make_test_bundle(tmp_path / "b"))
    model = str(tmp_path / "no-model")
    refused = {
        "bundle": [str(tmp_path / "missing"), "--model", model, "--prompt", "hi"],
        "model": [bundle, "--model", model, "--prompt", "hi"],
    }
    for what, args in refused.items():
        code, out, err = run(capsys, ["run", *args, "--json"])
        assert code == 1, (what, err)
        doc = envelope(out, "run")
        first = doc["results"][0]
        assert first["path"] == args[0]
        assert (
            first["problems"][0]["code"]
            == {
                "bundle": "BUNDLE_NOT_FOUND",
                "model": "MODEL_NOT_FOUND",
            }[what]
        )
        assert f"[{first['problems'][0]['code']}]" in err
    code, out, err = run(capsys, ["run", bundle, "--prompt", "hi", "--json"])  # no --model
    assert code == 2 and envelope(out, "run")["results"][0]["path"] is None
    with monkeypatch.context() as patch:
        missing_extra(patch, "torch")
        code, out, err = run(capsys, ["run", *refused["model"], "--json"])
    assert code == 2
    assert envelope(out, "run")["results"][0]["problems"][0]["code"] == "EXTRA_MISSING"


# --------------------------------------------------------------------- start-up

SIGNAL_DURING_IMPORT = (
    "import importlib.abc, os, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
    "MODULE, SIGNAL = sys.argv[1], getattr(signal, sys.argv[2])\n"
    "class Interrupt(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == MODULE:  # the signal arrives while this module loads\n"
    "            os.kill(os.getpid(), SIGNAL)\n"
    "        return None\n"
    "sys.meta_path.insert(0, Interrupt())\n"
    "from asa_format.entry import asa\n"
    "sys.argv = ['asa', *sys.argv[3:]]\n"
    "asa()\n"
)


@pytest.mark.parametrize(("name", "status"), [("SIGINT", 130), ("SIGTERM", 143)])
@pytest.mark.parametrize("module", ["numpy", "click", "asa_format.cli"])
def test_a_signal_during_start_up_is_quiet(name: str, status: int, module: str) -> None:
    for extra in ([], ["--json"]):
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                SIGNAL_DURING_IMPORT,
                module,
                name,
                "validate",
                str(GOOD),
                *extra,
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
            check=False,
        )
        assert result.returncode == status, result.stderr
        assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
        assert ("interrupted" if name == "SIGINT" else "terminated") in result.stderr
        if module != "numpy":  # before the command runs: the entry point's handlers
            assert "while starting" in result.stderr
        if extra:
            doc = envelope(result.stdout, "validate")
            assert doc["results"][0]["problems"][0]["code"] == "INTERRUPTED"
        else:
            assert result.stdout == ""


def test_the_entry_point_loads_nothing_heavy_before_its_handlers() -> None:
    code = (
        "import sys, signal, asa_format.entry as e\n"
        "heavy = [m for m in ('numpy', 'click', 'cryptography', 'onnx', 'onnxruntime', "
        "'asa_format.cli', 'asa_format.errors') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True
    )
    assert result.stdout.strip() == ""
    scripts = (ROOT / "pyproject.toml").read_text()
    assert 'asa = "asa_format.entry:asa"' in scripts
    assert 'asa-convert = "asa_format.entry:asa_convert"' in scripts
