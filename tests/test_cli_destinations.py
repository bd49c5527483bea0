"""``asa-convert SRC DEST [--force]`` never loses a user's data.

Each test drives the command a user types (a subprocess running the console
entry point) or, for the crash cases, a process killed at a chosen step of
the commit; then checks what is on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from asa_format.converters.convert import convert_legacy
from asa_format.storage import destination
from asa_format.storage.destination import OWNER_SUFFIX, recover

# asa-convert runs in every test here: the convert extra.
pytestmark = pytest.mark.convert

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "examples" / "asa_assets"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def convert(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asa_format.cli.convert", *args, "--samples", "64"],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=cwd,
        timeout=300,
        check=False,
    )


def tree(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its sha256 (the state a user would see)."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    convert_legacy(ASSETS, out, samples=64)
    return out


def test_force_refuses_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("four years of work")
    result = convert(str(ASSETS), str(precious), "--force")
    assert result.returncode == 1
    assert "DESTINATION_NOT_BUNDLE" in result.stdout and "not an asa bundle" in result.stdout
    assert (precious / "thesis.txt").read_text() == "four years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious"]


def test_force_refuses_a_file(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    result = convert(str(ASSETS), str(target), "--force")
    assert result.returncode == 1 and "DESTINATION_NOT_BUNDLE" in result.stdout
    assert target.read_text() == "keep me"


def test_force_refuses_the_source_itself(tmp_path: Path) -> None:
    src = tmp_path / "asa_assets"
    shutil.copytree(ASSETS, src)
    before = tree(src)
    result = convert(str(src), str(src), "--force")
    assert result.returncode == 1
    assert "DESTINATION_IS_SOURCE" in result.stdout and "is the source directory" in result.stdout
    assert tree(src) == before


def test_force_refuses_a_parent_of_the_source(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(ASSETS, proj / "assets")
    (proj / "train.py").write_text("print('my pipeline')\n")
    before = tree(proj)
    result = convert("assets", ".", "--force", cwd=proj)
    assert result.returncode == 1
    assert (
        "DESTINATION_IS_SOURCE" in result.stdout
        and "contains the source directory" in result.stdout
    )
    assert tree(proj) == before
    result = convert(str(proj / "assets"), str(proj), "--force")
    assert result.returncode == 1 and tree(proj) == before


def test_force_refuses_a_bundle_that_holds_other_files(bundle: Path) -> None:
    (bundle / "notes.txt").write_text("mine")
    before = tree(bundle)
    result = convert(str(ASSETS), str(bundle), "--force")
    assert result.returncode == 1
    assert "DESTINATION_NOT_BUNDLE" in result.stdout and "notes.txt" in result.stdout
    assert tree(bundle) == before


def test_force_replaces_a_bundle_in_one_atomic_exchange(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not destination.exchange_supported():
        pytest.skip("no renameat2 on this platform: the two-step swap is tested below")
    calls: list[int] = []
    real = destination._rename2

    def spy(src: Path, dst: Path, flags: int) -> bool:
        calls.append(flags)
        return real(src, dst, flags)

    monkeypatch.setattr(destination, "_rename2", spy)
    (bundle / "model.sig").write_text("an old signature")  # a bundle may carry its signature
    convert_legacy(ASSETS, bundle, samples=64, force=True, model_type="lfm2")
    assert calls == [destination._RENAME_EXCHANGE]
    assert json.loads((bundle / "manifest.json").read_text())["model"]["type"] == "lfm2"
    assert not (bundle / "model.sig").exists()
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle"]


KILL_AT_STEP = (
    "import os, signal, sys\n"
    "from asa_format.storage import destination\n"
    "from asa_format.converters.convert import convert_legacy\n"
    "destination._renameat2 = None  # a platform without an atomic exchange\n"
    "step = sys.argv[3]\n"
    "destination._after_step = lambda name: os.kill(os.getpid(), signal.SIGKILL) if name == step else None\n"
    "convert_legacy(sys.argv[1], sys.argv[2], samples=64, force=True, model_type='lfm2')\n"
)


@pytest.mark.parametrize("step", ["moved-old", "moved-new"])
def test_a_swap_killed_midway_is_completed_by_the_next_run(bundle: Path, step: str) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP, str(ASSETS), str(bundle), step],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    leftovers = sorted(p.name for p in bundle.parent.iterdir() if p.name != "bundle")
    assert leftovers and all(name.startswith(".bundle.asa-") for name in leftovers)
    if step == "moved-old":
        assert not bundle.exists()  # the moment the old code left the user with nothing

    notes = recover(bundle)
    assert notes
    assert json.loads((bundle / "manifest.json").read_text())["model"]["type"] == "lfm2"
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle"]


def test_the_next_cli_run_recovers_and_says_so(bundle: Path) -> None:
    subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP, str(ASSETS), str(bundle), "moved-old"],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )
    result = convert(str(ASSETS), str(bundle), "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "note: completed the replacement" in result.stderr
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["bundle"]


SIGNAL_AFTER_FIRST_FILE = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
    "from asa_format.storage import writer\n"
    "from asa_format.cli.convert import main\n"
    "sig = getattr(signal, sys.argv[1])\n"
    "def hook(name):\n"
    "    os.kill(os.getpid(), sig)\n"
    "    time.sleep(30)  # the signal arrives here\n"
    "writer._after_file_written = hook\n"
    "main(sys.argv[2:])\n"
)


@pytest.mark.parametrize(
    ("name", "status", "word"), [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")]
)
def test_sigint_and_sigterm_clean_up(
    tmp_path: Path, bundle: Path, name: str, status: int, word: str
) -> None:
    before = tree(bundle)
    for dest in (tmp_path / "new", bundle):
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                SIGNAL_AFTER_FIRST_FILE,
                name,
                str(ASSETS),
                str(dest),
                "--force",
                "--samples",
                "64",
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=300,
            check=False,
        )
        assert result.returncode == status, result.stderr
        assert (
            word in result.stderr
            and "Traceback" not in result.stderr
            and "Aborted!" not in result.stderr
        )
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    assert tree(bundle) == before


def test_a_dead_runs_temporary_directory_is_removed_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = (
        "import os, signal, sys\n"
        "from asa_format.storage import writer\n"
        "from asa_format.converters.convert import convert_legacy\n"
        "writer._after_file_written = lambda name: os.kill(os.getpid(), signal.SIGKILL)\n"
        "convert_legacy(sys.argv[1], sys.argv[2], samples=64)\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, str(ASSETS), str(out)], env=ENV, timeout=300, check=False
    )
    assert killed.returncode == -signal.SIGKILL
    stale = sorted(p.name for p in tmp_path.iterdir())
    assert len(stale) == 2 and any(n.endswith(OWNER_SUFFIX) for n in stale)

    # look-alikes we did not create, and a run that is still alive, are left alone
    lookalike = tmp_path / ".out.asa-tmp-0123456789ab"
    lookalike.mkdir()
    (lookalike / "data.txt").write_text("not ours")
    alive = destination.Staging(out)  # this process: alive
    try:
        result = convert(str(ASSETS), str(out))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "removed .out.asa-tmp-" in result.stderr
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted(["out", lookalike.name, alive.tmp.name, alive.owner.name])
        assert (lookalike / "data.txt").read_text() == "not ours"
    finally:
        alive.discard()
    assert not alive.tmp.exists() and not alive.owner.exists()


def test_without_force_an_existing_destination_is_kept(bundle: Path) -> None:
    before = tree(bundle)
    result = convert(str(ASSETS), str(bundle))
    assert result.returncode == 1
    assert "DESTINATION_EXISTS" in result.stdout and "--force" in result.stdout
    assert "force=True" not in result.stdout  # the hint names the flag, not the keyword
    assert tree(bundle) == before
