"""``python -m benchmarks`` writes where ``--out`` says; the committed results change only
with ``--update-results``. The folder is chosen before anything is measured, so these
runs stop at the argument checks (or use ``--help``) and take a second each."""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.output import RESULTS_DIR, add_output_options, output_dir

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _committed() -> dict[str, str]:
    return {
        str(p.relative_to(RESULTS_DIR)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(RESULTS_DIR.rglob("*"))
        if p.is_file()
    }


def _parse(*argv: str) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="bench")
    add_output_options(parser, "results.json")
    return parser, parser.parse_args(list(argv))


def test_default_is_a_fresh_folder_that_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    parser, args = _parse()
    first = output_dir(parser, args, "results")
    second = output_dir(parser, args, "results")
    try:
        assert first != second and first.is_dir() and second.is_dir()
        assert not list(first.iterdir())
        assert RESULTS_DIR not in first.resolve().parents
        assert str(first) in capsys.readouterr().err
    finally:
        first.rmdir()
        second.rmdir()


def test_out_is_where_it_writes(tmp_path: Path) -> None:
    parser, args = _parse("--out", str(tmp_path / "a" / "b"))
    assert output_dir(parser, args, "results") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir()


@pytest.mark.parametrize(
    "module", [["benchmarks"], ["benchmarks", "serving"], ["benchmarks.causal_lm_coverage"]]
)
def test_committed_results_are_refused_without_update_results(module: list[str]) -> None:
    before = _committed()
    for out in (RESULTS_DIR, RESULTS_DIR / "generation", RESULTS_DIR / "new-subfolder"):
        proc = subprocess.run(
            [sys.executable, "-m", module[0], *module[1:], "--out", str(out)],
            cwd=ROOT,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 2, proc.stderr
        assert "--update-results" in proc.stderr
    assert _committed() == before
    assert not (RESULTS_DIR / "new-subfolder").exists()


def test_update_results_makes_the_committed_folder_the_default() -> None:
    parser, args = _parse("--update-results")
    assert output_dir(parser, args, "results") == RESULTS_DIR
    assert output_dir(parser, args, "results", subdir="generation") == RESULTS_DIR / "generation"
    parser, args = _parse("--update-results", "--out", str(RESULTS_DIR / "generation"))
    assert output_dir(parser, args, "results") == RESULTS_DIR / "generation"
