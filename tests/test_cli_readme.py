"""Every code block of README.md and every command example of docs/*.md runs as written.

The pages follow one convention, checked here:

* a ```` ```bash ```` or ```` ```python ```` block is runnable: it runs from
  the root of a clone, in page order (README.md first, then docs/*.md by
  name; a docs page may use what the README's quick start wrote). A bash
  line ending in ``# exit N`` must exit with N, every other line with 0;
  a Python block with 0;
* a ```` ```text ```` block directly after a runnable block (blank lines
  between at most) is that block's output sample: the real output must
  match it line by line (a bash block's stdout and stderr together, as a
  terminal shows them; a Python block's stdout). A sample line ``...``
  stands for any number of lines. Other ```` ```text ```` blocks and other
  languages (yaml, json) are not run;
* a block preceded by ``<!-- not run by tests/test_cli_readme.py: REASON -->``
  is not run; only commands that install packages, run the test suite or run
  the minute-long benchmarks may carry it (:data:`NOT_RUN_PREFIXES`);
* the README's two set-up commands are checked by their own tests: the
  test command is the one ``.ci/run`` runs; the main job's ``asa`` part runs.

The blocks run in a temporary copy of the repository (the files git tracks
or would track), with ``/tmp/`` in every block mapped to a fresh temporary
directory (and back in the output), the test's Python first on ``PATH``, no
network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"<!-- not run by tests/test_cli_readme\.py: (.+?) -->\s*$")
EXIT = re.compile(r"#\s*exit (\d+)\s*$")
RUNNABLE = ("bash", "python")
SETUP_SECTION = "## Set-up on a fresh machine"
# what a block may do without being run here, each checked elsewhere
NOT_RUN_PREFIXES = (
    "python3 -m venv ",  # installs: the set-up commands and .ci/run install
    ". .venv/bin/activate",
    "pip install ",
    "python -m pytest",  # the test suite itself
    "python -m benchmarks",  # minutes of measurement; tests/test_benchmarks_smoke.py runs --quick
)
# output that differs by design, from run to run or in its last bits: (pattern, replacement)
NORMALIZE: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"\bkey [0-9a-f]{16}\.\.\."), "key <key id>..."),  # a fresh key per run
    # a float printed in full (repr) follows the BLAS build in its last digits: 6 significant
    (re.compile(r"-?\d+\.\d{10,}(?:e-?\d+)?"), lambda m: f"{float(m.group(0)):.6g}"),
    # a duration printed in seconds (asa fit's report): the machine's speed, not the result
    (re.compile(r"\b\d+\.\d s$", re.M), "<seconds> s"),
    # a fitted bundle records the versions of the libraries that fitted it (its provenance), so
    # its digest follows what is installed; the data's and the system prompt's digests do not
    (re.compile(r"^(fitted\s+-> \S+\ndigest\s+sha256:)[0-9a-f]{64}$", re.M), r"\1<digest>"),
    (re.compile(r"^(ok\s+/tmp/asa-fit\b.*sha256:)[0-9a-f]{64}\)$", re.M), r"\1<digest>)"),
)
README_MAX_LINES = 290
TIMEOUT_S = 300


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    section: str  # the nearest "## " heading above
    not_run: str | None = None  # the reason, when marked
    sample: str | None = None  # the output sample that directly follows

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, an output sample attached to the block it follows."""
    text = page.read_text(encoding="utf-8")
    found: list[Block] = []
    previous_end = -1
    for match in FENCE.finditer(text):
        before = text[: match.start()]
        headings = re.findall(r"^## .*$", before, flags=re.M)
        lines_before = before.rstrip("\n").splitlines()
        marker = NOT_RUN.search(lines_before[-1]) if lines_before else None
        block = Block(
            page=page,
            line=before.count("\n") + 1,
            lang=match.group(1),
            code=match.group(2),
            section=headings[-1] if headings else "",
            not_run=marker.group(1) if marker else None,
        )
        follows = previous_end >= 0 and not text[previous_end : match.start()].strip()
        if block.lang == "text" and follows and found and found[-1].lang in RUNNABLE:
            found[-1] = Block(**{**found[-1].__dict__, "sample": block.code})
        found.append(block)
        previous_end = match.end()
    return found


def runnable(page: Path) -> list[Block]:
    return [
        b
        for b in blocks(page)
        if b.lang in RUNNABLE and b.not_run is None and b.section != SETUP_SECTION
    ]


def bash_commands(code: str) -> list[str]:
    """The commands of a bash block: one a line (backslash continuations joined), no comments."""
    commands: list[str] = []
    pending = ""
    for line in code.splitlines():
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip() and not line.lstrip().startswith("#"):
            commands.append(line)
    return commands


# --------------------------------------------------------------------------- running


@dataclass
class Workspace:
    clone: Path
    tmp: Path
    env: dict[str, str]
    failures: dict[Path, list[str]] = field(default_factory=dict)

    def to_tmp(self, code: str) -> str:
        return code.replace("/tmp/", f"{self.tmp}/")

    def from_tmp(self, output: str) -> str:
        return output.replace(str(self.tmp), "/tmp")


def _copy_of_the_repository(destination: Path) -> Path:
    """The files of a clone: what git tracks or would track (not what it ignores)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:  # not a git checkout: the folders the pages use
        for name in ("examples", "benchmarks", "spec", "docs", "tests"):
            shutil.copytree(ROOT / name, destination / name, symlinks=True)
        return destination
    for name in sorted(set(listed.stdout.decode().split("\0")) - {""}):
        source = ROOT / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the work tree
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return destination


def _normalized(text: str) -> list[str]:
    for pattern, replacement in NORMALIZE:
        text = pattern.sub(replacement, text)
    return [line.rstrip() for line in text.strip("\n").splitlines()]


def sample_mismatch(sample: str, output: str) -> str | None:
    """None when ``output`` matches ``sample`` (``...`` lines match any lines), else why not."""
    want, got = _normalized(sample), _normalized(output)

    def match(i: int, j: int) -> bool:
        if i == len(want):
            return j == len(got)
        if want[i] == "...":
            return any(match(i + 1, k) for k in range(j, len(got) + 1))
        return j < len(got) and want[i] == got[j] and match(i + 1, j + 1)

    if match(0, 0):
        return None
    return "the output does not match the sample:\n--- sample\n{}\n--- output\n{}".format(
        "\n".join(want), "\n".join(got)
    )


def _run_block(ws: Workspace, block: Block) -> str | None:
    """Run one block; None if it did what the page says, else what went wrong."""
    if block.lang == "python":
        result = subprocess.run(
            [sys.executable, "-c", ws.to_tmp(block.code)],
            cwd=ws.clone,
            env=ws.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        shown = ws.from_tmp(result.stdout)
        if result.returncode != 0 or "Traceback" in result.stderr:
            return f"exit {result.returncode}\n{shown[-2000:]}{ws.from_tmp(result.stderr)[-3000:]}"
    else:
        shown = ""
        for command in bash_commands(block.code):
            expected = EXIT.search(command)
            result = subprocess.run(
                ["bash", "-c", ws.to_tmp(command)],
                cwd=ws.clone,
                env=ws.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
            )
            output = ws.from_tmp(result.stdout)
            shown += output
            want = int(expected.group(1)) if expected else 0
            if result.returncode != want or "Traceback" in output:
                return f"{command}\nexit {result.returncode}, expected {want}\n{output[-3000:]}"
    if block.sample is not None:
        return sample_mismatch(block.sample, shown)
    return None


def _run_page(ws: Workspace, page: Path) -> None:
    failures = []
    for block in runnable(page):
        problem = _run_block(ws, block)
        if problem is not None:
            failures.append(f"{block.where()} ({block.lang}): {problem}")
    ws.failures[page] = failures


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A copy of the repository where the README has run (its failures recorded)."""
    base = tmp_path_factory.mktemp("readme")
    clone = _copy_of_the_repository(base / "clone")
    tmp = base / "tmp"
    tmp.mkdir()
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": os.pathsep.join([bindir, os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "PYTHONUNBUFFERED": "1",
        "HOME": str(tmp),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    ws = Workspace(clone=clone, tmp=tmp, env=env)
    _run_page(ws, README)
    yield ws


# --------------------------------------------------------------------------- the pages run


@pytest.mark.runtime
@pytest.mark.convert
@pytest.mark.interop
def test_the_readme_runs_as_written(workspace: Workspace) -> None:
    failures = workspace.failures[README]
    assert not failures, "\n\n".join(failures)
    assert (workspace.tmp / "asa-example" / "model.sig").is_file()
    assert (workspace.tmp / "cv-roundtrip.gguf").read_bytes() == (
        ROOT / "examples" / "control_vector.gguf"
    ).read_bytes()


@pytest.mark.runtime
@pytest.mark.convert
@pytest.mark.interop
@pytest.mark.parametrize("page", DOCS, ids=[p.name for p in DOCS])
def test_the_docs_command_examples_run_as_written(workspace: Workspace, page: Path) -> None:
    _run_page(workspace, page)
    failures = workspace.failures[page]
    assert not failures, "\n\n".join(failures)


@pytest.mark.convert
def test_the_set_up_main_job_runs(tmp_path: Path) -> None:
    """The main job's ``asa`` commands (the ``pip install`` before them is what .ci/run does)."""
    main_job = next(b for b in blocks(README) if b.section == SETUP_SECTION).code.strip()
    parts = [p for p in main_job.split(" && ") if p.startswith(("asa ", "asa-convert "))]
    assert [p.split()[:2] for p in parts] == [
        ["asa-convert", "examples/asa_assets"],
        ["asa", "validate"],
        ["asa", "inspect"],
    ]
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    result = subprocess.run(
        ["bash", "-c", " && ".join(parts).replace("/tmp/", f"{tmp_path}/")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "domain agreement 100.00%, gate agreement 100.00%" in result.stdout
    assert result.stdout.count("sha256:64445115fb744aa5") >= 3  # convert, validate, inspect


# --------------------------------------------------------------------------- the pages' form


def test_the_test_set_up_command_is_the_one_ci_runs() -> None:
    setup = [b for b in blocks(README) if b.section == SETUP_SECTION]
    assert [b.lang for b in setup] == ["bash", "bash"]
    test_command = setup[1].code.strip()
    assert test_command.endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci, "README's test command is not a line of .ci/run"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_blocks_are_marked_runnable_or_output(page: Path) -> None:
    found = blocks(page)
    unlabelled = [b.where() for b in found if not b.lang]
    assert not unlabelled, f"fenced blocks without a language: {unlabelled}"
    for b in found:
        if b.lang == "text" and b.sample is None:
            # a text block that is no sample must not look like a command
            assert not re.match(r"\s*(\$ |asa |python )", b.code), b.where()
        if b.not_run is not None:
            assert b.lang in RUNNABLE, b.where()
            commands = [p.strip() for c in bash_commands(b.code) for p in c.split(" && ")]
            bad = [c for c in commands if not c.startswith(NOT_RUN_PREFIXES)]
            assert not bad, f"{b.where()}: not-run block with commands that must run: {bad}"


def test_the_readme_is_short_and_runs_something() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES
    run = runnable(README)
    assert sum(b.lang == "bash" for b in run) >= 6 and sum(b.lang == "python" for b in run) >= 3
    assert sum(b.sample is not None for b in run) >= 5


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_local_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    missing = [t for t in local if not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to files that do not exist: {missing}"


def test_the_performance_tables_are_quoted_from_the_results() -> None:
    """Every table row of docs/performance.md is a row of a committed results file."""
    rows = [
        line
        for line in (ROOT / "docs" / "performance.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("|") and not re.match(r"\|\s*-+\s*\|", line)
    ]
    results = "\n".join(
        p.read_text(encoding="utf-8") for p in (ROOT / "benchmarks" / "results").rglob("*.md")
    ).splitlines()
    assert len(rows) >= 10
    missing = [r for r in rows if r not in results]
    assert not missing, f"rows of docs/performance.md not in benchmarks/results/: {missing}"


def test_sample_matching_is_line_by_line() -> None:
    assert sample_mismatch("a\n...\nd", "a\nb\nc\nd\n") is None
    assert sample_mismatch("a\n...", "a") is None
    assert sample_mismatch("a\nd", "a\nb\nd") is not None
    assert sample_mismatch("a\n...\nd", "a\nb\nc") is not None
    assert sample_mismatch("key 0123456789abcdef...", "key fedcba9876543210...") is None
    fitted = "fitted       -> /tmp/asa-fit\ndigest       sha256:{}\nkind         asa"
    assert sample_mismatch(fitted.format("a" * 64), fitted.format("b" * 64)) is None
    ok = "ok    /tmp/asa-fit  (tiny-lfm2, layer 5, sha256:{})"
    assert sample_mismatch(ok.format("a" * 64), ok.format("b" * 64)) is None
    converted = "ok    /tmp/asa-example  (layer 4, sha256:{})"
    assert sample_mismatch(converted.format("a" * 64), converted.format("b" * 64)) is not None
    data = "data         sha256:{}  (labelled)"
    assert sample_mismatch(data.format("a" * 64), data.format("b" * 64)) is not None
    assert sample_mismatch('"p": 0.0012877815127688727', '"p": 0.0012877815127688731') is None
    assert sample_mismatch('"p": 0.0012877815127688727', '"p": 0.0012879815127688727') is not None


# --------------------------------------------------------------------------- the shipped examples


@pytest.mark.interop
def test_the_shipped_steering_files_are_what_their_script_writes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_interop_examples.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in ("control_vector.gguf", "steering.svec"):
        assert (tmp_path / name).read_bytes() == (ROOT / "examples" / name).read_bytes(), name


@pytest.mark.interop
def test_the_shipped_gguf_has_repengs_control_vector_layout() -> None:
    """Read with ggml's own reader: the keys and tensors repeng's export_gguf writes."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(ROOT / "examples" / "control_vector.gguf"))

    def field(name: str) -> Any:
        return reader.fields[name].contents()

    assert field("general.architecture") == "controlvector"
    assert field("controlvector.model_hint") == "lfm2"
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == ["direction.2", "direction.3", "direction.4"]
    assert int(field("controlvector.layer_count")) == len(tensors)
    for tensor in tensors.values():
        assert tensor.tensor_type == gguf.GGMLQuantizationType.F32
        data = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        assert data.shape == (48,) and np.isfinite(data).all()


def test_the_shipped_svec_has_activation_steerings_layout() -> None:
    doc = json.loads((ROOT / "examples" / "steering.svec").read_text(encoding="utf-8"))
    assert set(doc) == {"model_type", "directions", "explained_variances"}
    assert doc["model_type"] == "lfm2"
    assert sorted(doc["directions"]) == sorted(doc["explained_variances"]) == ["3", "4"]
    assert all(
        len(v) == 48 and all(isinstance(x, float) for x in v) for v in doc["directions"].values()
    )
