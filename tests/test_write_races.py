"""Writes, from the attacker's side: races, planted links, signals, and what --force may replace.

* Another writer creates the destination while a command writes (a hook
  between the finished temporary and the commit, ``destination._before_commit``):
  without ``--force`` it is never replaced, with ``renameat2`` and with the
  fallbacks (``link`` for a file, an exclusive ``mkdir`` for a bundle).
* A symbolic link planted at a name the old code used for its temporaries
  (``.x.sig.tmp-PID``, ``.NAME.asa-tmp-TOKEN.owner.new``) is never followed.
* SIGTERM, SIGINT and SIGKILL while ``asa sign`` / ``asa export`` commit leave
  nothing inside the bundle (it still validates) and, but for SIGKILL, nothing
  at all; what SIGKILL left (no clean-up can run) the next write of that file
  removes.
* ``--force`` replaces only what the command writes: a GGUF control vector
  (export), a signature file (sign), never a file inside the bundle being read;
  a replaced file gets the mode bundles use (0644 under the usual umask).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asa_format import constants as C
from asa_format.cli import main as asa_main
from asa_format.storage import destination
from asa_format.storage.reader import read_bundle_dir
from asa_format.testing import make_test_bundle

pytestmark = pytest.mark.interop  # export and import need the gguf package

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, dict[str, Any]]:
    with pytest.raises(SystemExit) as info:
        asa_main([*map(str, args), "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    code = info.value.code
    assert isinstance(code, int)
    return code, json.loads(out)


def codes(doc: dict[str, Any]) -> list[str]:
    return [p["code"] for r in doc["results"] for p in r["problems"]]


def tree(path: Path) -> dict[str, str]:
    """Every entry under ``path``: a file's sha256, a link's target, a directory's mark."""
    out: dict[str, str] = {}
    for p in sorted(path.rglob("*")):
        key = str(p.relative_to(path))
        if p.is_symlink():
            out[key] = "-> " + os.readlink(p)
        elif p.is_dir():
            out[key] = "dir"
        else:
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def control_vector(path: Path, arch: str = "controlvector", seed: int = 0) -> Path:
    from asa_format.interop.gguf_cv import write_control_vector

    rng = np.random.default_rng(seed)
    if arch == "controlvector":
        write_control_vector(path, "llama", {1: rng.standard_normal(16).astype(np.float32)})
    else:
        import gguf

        writer = gguf.GGUFWriter(str(path), arch)
        writer.add_tensor("token_embd.weight", rng.standard_normal(16).astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return make_test_bundle(tmp_path / "b")


@pytest.fixture(params=["renameat2", "fallback"])
def commit_primitive(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "fallback":
        monkeypatch.setattr(destination, "_renameat2", None)  # link / exclusive mkdir
    elif not destination.exchange_supported():
        pytest.skip("no renameat2 on this platform")
    return str(request.param)


def another_writer(monkeypatch: pytest.MonkeyPatch, make: Callable[[Path], None]) -> list[Path]:
    """Create the destination between the finished temporary and the commit."""
    seen: list[Path] = []

    def hook(dest: Path) -> None:
        seen.append(dest)
        make(dest)

    monkeypatch.setattr(destination, "_before_commit", hook)
    return seen


def _theirs_file(dest: Path) -> None:
    dest.write_bytes(b"theirs")


def _theirs_dir(dest: Path) -> None:
    dest.mkdir()
    (dest / "theirs.txt").write_text("theirs")


def _theirs_empty_dir(dest: Path) -> None:
    dest.mkdir()


# ------------------------------------------------------------- another writer


def test_export_never_replaces_a_file_that_appears(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    bundle: Path,
    commit_primitive: str,
) -> None:
    out = tmp_path / "out" / "cv.gguf"
    out.parent.mkdir()
    seen = another_writer(monkeypatch, _theirs_file)
    code, doc = run(
        capsys, "export", bundle, out, "--to", "gguf", "--domain", "math", "--sign", "+1"
    )
    assert seen == [out]
    assert code == 1 and codes(doc) == ["DESTINATION_EXISTS"]
    assert "appeared" in doc["results"][0]["problems"][0]["message"]
    assert out.read_bytes() == b"theirs"
    assert sorted(p.name for p in out.parent.iterdir()) == ["cv.gguf"]  # no temporary left


@pytest.mark.parametrize("where", ["default", "outside"])
def test_sign_never_replaces_a_signature_that_appears(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    bundle: Path,
    keys: dict[str, tuple[Path, Path]],
    commit_primitive: str,
    where: str,
) -> None:
    target = bundle / C.SIGNATURE_FILE if where == "default" else tmp_path / "sigs" / "x.sig"
    target.parent.mkdir(exist_ok=True)
    around = sorted(p.name for p in tmp_path.iterdir())
    seen = another_writer(monkeypatch, _theirs_file)
    args = ["sign", bundle, "--private-key", keys["alice"][0]]
    code, doc = run(capsys, *args, *(["--signature", target] if where == "outside" else []))
    assert seen == [target]
    assert code == 1 and codes(doc) == ["SIGNATURE_EXISTS"]
    assert target.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == around  # no temporary beside it
    assert not [p for p in target.parent.iterdir() if ".asa-tmp-" in p.name]


@pytest.mark.parametrize("theirs", [_theirs_dir, _theirs_empty_dir, _theirs_file])
def test_import_never_replaces_a_destination_that_appears(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    commit_primitive: str,
    theirs: Callable[[Path], None],
) -> None:
    source = control_vector(tmp_path / "cv.gguf")
    dest = tmp_path / "out"
    seen = another_writer(monkeypatch, theirs)
    code, doc = run(capsys, "import", source, dest, "--num-layers", "4")
    assert seen == [dest]
    assert code == 1 and codes(doc) == ["DESTINATION_EXISTS"]
    if theirs is _theirs_file:
        assert dest.read_bytes() == b"theirs"
    else:
        assert [p.name for p in dest.iterdir()] == (["theirs.txt"] if theirs is _theirs_dir else [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv.gguf", "out"]


@pytest.mark.convert
def test_convert_never_replaces_a_directory_that_appears(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    commit_primitive: str,
) -> None:
    from asa_format.cli.convert import main as convert_main

    dest = tmp_path / "out"
    seen = another_writer(monkeypatch, _theirs_dir)
    with pytest.raises(SystemExit) as info:
        convert_main(
            [str(ROOT / "examples" / "asa_assets"), str(dest), "--samples", "64", "--json"]
        )
    doc = json.loads(capsys.readouterr().out)
    assert seen == [dest] and info.value.code == 1 and codes(doc) == ["DESTINATION_EXISTS"]
    assert [p.name for p in dest.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_without_renameat2_a_bundle_still_lands_whole(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(destination, "_renameat2", None)
    source = control_vector(tmp_path / "cv.gguf")
    code, _ = run(capsys, "import", source, tmp_path / "out", "--num-layers", "4")
    assert code == 0
    assert read_bundle_dir(tmp_path / "out").ok
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv.gguf", "out"]


# ------------------------------------------------------------- planted links


def test_a_link_at_the_old_signature_temporary_name_is_not_followed(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    bundle: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    sigs = tmp_path / "sigs"
    sigs.mkdir()
    planted = sigs / f".x.sig.tmp-{os.getpid()}"  # the name asa sign used to write
    planted.symlink_to(victim)
    code, doc = run(
        capsys, "sign", bundle, "--private-key", keys["alice"][0], "--signature", sigs / "x.sig"
    )
    assert code == 0, doc
    assert victim.read_text() == "precious"
    assert os.readlink(planted) == str(victim)
    assert sorted(p.name for p in sigs.iterdir()) == sorted([planted.name, "x.sig"])
    code, doc = run(
        capsys, "verify", bundle, "--public-key", keys["alice"][1], "--signature", sigs / "x.sig"
    )
    assert code == 0, doc

    # inside the bundle, such a link makes the bundle invalid: nothing is signed
    inside = bundle / f".{C.SIGNATURE_FILE}.tmp-{os.getpid()}"
    inside.symlink_to(victim)
    code, doc = run(capsys, "sign", bundle, "--private-key", keys["alice"][0])
    assert code == 1 and codes(doc)[:2] == ["SIGNATURE_BUNDLE_INVALID", "PATH_SYMLINK"]
    assert victim.read_text() == "precious" and not (bundle / C.SIGNATURE_FILE).exists()


def test_a_link_at_the_old_owner_record_name_is_not_followed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The two-step swap (no renameat2) rewrites its owner record: at a fresh name now."""
    monkeypatch.setattr(destination, "_renameat2", None)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    source = control_vector(tmp_path / "cv.gguf")
    dest = tmp_path / "out"
    assert run(capsys, "import", source, dest, "--num-layers", "4")[0] == 0
    planted: list[Path] = []
    real = destination.Staging.set_phase

    def plant(self: destination.Staging, phase: str) -> None:
        link = self.owner.with_name(self.owner.name + ".new")  # the old predictable name
        link.symlink_to(victim)
        planted.append(link)
        real(self, phase)

    monkeypatch.setattr(destination.Staging, "set_phase", plant)
    code, doc = run(capsys, "import", source, dest, "--num-layers", "4", "--force", "--name", "v2")
    assert code == 0, doc
    assert planted and victim.read_text() == "precious"
    assert read_bundle_dir(dest).ok
    manifest = json.loads((dest / C.MANIFEST_FILE).read_text())
    assert [iv["name"] for iv in manifest["interventions"]] == ["v2"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["cv.gguf", "out", "victim.txt", planted[0].name])


# ------------------------------------------------------------- signals

HOLD_BEFORE_COMMIT = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
    "from pathlib import Path\n"
    "from asa_format.storage import destination\n"
    "from asa_format.entry import install_startup_handlers\n"
    "install_startup_handlers()\n"
    "marker = Path(sys.argv[1])\n"
    "def hold(dest):\n"
    "    marker.write_text(str(dest))\n"
    "    time.sleep(60)  # the signal arrives here: the temporary is whole, not yet moved\n"
    "destination._before_commit = hold\n"
    "from asa_format.cli import main\n"
    "main(sys.argv[2:])\n"
)


def _hold_and_signal(
    marker: Path, args: list[str], sig: signal.Signals
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_BEFORE_COMMIT, str(marker), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the command never reached its commit: {out}\n{err}")
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)],
)
def test_a_signal_during_sign_leaves_the_bundle_valid(
    tmp_path: Path, keys: dict[str, tuple[Path, Path]], sig: signal.Signals, status: int
) -> None:
    work = tmp_path / "work"
    bundle = make_test_bundle(work / "b")
    before, around = tree(bundle), sorted(p.name for p in work.iterdir())
    result = _hold_and_signal(
        tmp_path / "marker", ["sign", str(bundle), "--private-key", str(keys["alice"][0])], sig
    )
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert tree(bundle) == before  # nothing inside the bundle, not even a temporary
    assert read_bundle_dir(bundle).ok
    if sig == signal.SIGKILL:  # no clean-up can run: what is left lies beside the bundle
        left = sorted(set(p.name for p in work.iterdir()) - set(around))
        assert left and all(n.startswith(f".{C.SIGNATURE_FILE}.asa-tmp-") for n in left), left
        again = _cli("sign", str(bundle), "--private-key", str(keys["alice"][0]))
        assert again.returncode == 0, again.stderr
        assert f"note: removed {left[0]}, left by process" in again.stderr, again.stderr
        assert sorted(p.name for p in work.iterdir()) == around  # the next sign removed it
        assert (bundle / C.SIGNATURE_FILE).is_file() and read_bundle_dir(bundle).ok
    else:
        assert ("terminated" if sig == signal.SIGTERM else "interrupted") in result.stderr
        assert sorted(p.name for p in work.iterdir()) == around  # the temporary is gone


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asa_format.cli", *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        check=False,
    )


@pytest.mark.parametrize(
    ("sig", "status"),
    [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)],
)
def test_a_signal_during_export_removes_the_temporary(
    tmp_path: Path, sig: signal.Signals, status: int
) -> None:
    bundle = make_test_bundle(tmp_path / "b")
    out = tmp_path / "out"
    out.mkdir()
    args = ["export", str(bundle), str(out / "cv.gguf"), "--to", "gguf", "--domain", "math"]
    result = _hold_and_signal(tmp_path / "marker", [*args, "--sign", "+1", "--json"], sig)
    assert result.returncode == status, result.stderr
    if sig == signal.SIGKILL:  # the private folder and its owner file stay until the next write
        left = sorted(p.name for p in out.iterdir())
        assert len(left) == 2 and all(n.startswith(".cv.gguf.asa-tmp-") for n in left), left
        again = _cli(*args, "--sign", "+1")
        assert again.returncode == 0, again.stderr
        assert "note: removed .cv.gguf.asa-tmp-" in again.stderr, again.stderr
        assert sorted(p.name for p in out.iterdir()) == ["cv.gguf"]
        return
    assert list(out.iterdir()) == []
    doc = json.loads(result.stdout)
    assert codes(doc) == ["INTERRUPTED"]


# ------------------------------------------------------------- what --force replaces


def test_export_force_replaces_only_a_control_vector(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bundle: Path
) -> None:
    export = ["--to", "gguf", "--domain", "math", "--sign", "+1", "--force"]
    notes = tmp_path / "notes.gguf"
    notes.write_text("my notes")
    model = control_vector(tmp_path / "model.gguf", arch="llama")
    real = control_vector(tmp_path / "real.gguf", seed=1)
    link = tmp_path / "link.gguf"
    link.symlink_to(real)
    folder = tmp_path / "folder.gguf"
    folder.mkdir()
    before = tree(tmp_path)
    for target in (notes, model, link, folder):
        code, doc = run(capsys, "export", bundle, target, *export)
        assert code == 1 and codes(doc) == ["DESTINATION_WRONG_KIND"], (target, doc)
    assert tree(tmp_path) == before

    code, doc = run(capsys, "export", bundle, real, *export)
    assert code == 0, doc
    assert real.read_bytes() != b"" and tree(tmp_path)["real.gguf"] != before["real.gguf"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(real.stat().st_mode) == 0o644 & ~umask
    assert os.readlink(link) == str(real)


def test_export_never_writes_inside_the_bundle(
    capsys: pytest.CaptureFixture[str], bundle: Path
) -> None:
    before = tree(bundle)
    export = ["--to", "gguf", "--domain", "math", "--sign", "+1"]
    for target, force in (
        (bundle / C.MANIFEST_FILE, ["--force"]),
        (bundle / C.VECTORS_FILE, ["--force"]),
        (bundle / "new.gguf", []),
        (bundle, ["--force"]),
    ):
        code, doc = run(capsys, "export", bundle, target, *export, *force)
        assert code == 1 and codes(doc) == ["DESTINATION_IN_SOURCE"], (target, doc)
    assert tree(bundle) == before


def test_sign_force_replaces_only_a_signature_file(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    bundle: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:
    sign = ["sign", bundle, "--private-key", keys["alice"][0], "--force", "--signature"]
    work = tmp_path / "sigs"
    work.mkdir()
    (work / "notes.sig").write_text("my notes")
    (work / "other.json").write_text(json.dumps({"mediaType": "application/json"}))
    (work / "big.sig").write_bytes(b" " * (C.MAX_SIGNATURE_BYTES + 1))
    (work / "folder.sig").mkdir()
    real = work / "real.sig"
    run(capsys, "sign", bundle, "--private-key", keys["mallory"][0], "--signature", real)
    (work / "link.sig").symlink_to(real)
    before = tree(work)
    for name in ("notes.sig", "other.json", "big.sig", "folder.sig", "link.sig"):
        code, doc = run(capsys, *sign, work / name)
        assert code == 1 and codes(doc) == ["DESTINATION_WRONG_KIND"], (name, doc)
    assert tree(work) == before

    code, doc = run(capsys, *sign, real)  # a signature (here another key's): replaced
    assert code == 0, doc
    assert tree(work)["real.sig"] != before["real.sig"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(real.stat().st_mode) == 0o644 & ~umask
    code, doc = run(capsys, "verify", bundle, "--public-key", keys["alice"][1], "--signature", real)
    assert code == 0, doc


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GGUF",
        b"GGUF\x03\x00\x00\x00" + b"\x00" * 8 + b"\xff" * 8,  # 2^64-1 metadata entries
        b"GGUF\x03\x00\x00\x00" + b"\x00" * 8 + b"\x01" + b"\x00" * 7 + b"\xff" * 8,  # huge key
        b"GGUF\x03\x00\x00\x00"
        + b"\x00" * 8
        + b"\x01"
        + b"\x00" * 7
        + (20).to_bytes(8, "little")
        + b"general.architecture"
        + (9).to_bytes(4, "little")
        + (8).to_bytes(4, "little")
        + b"\xff" * 8,  # huge array
        b"\x00" * (1 << 21),
    ],
)
def test_the_control_vector_check_is_bounded(tmp_path: Path, data: bytes) -> None:
    from asa_format.interop.export import control_vector_problem

    path = tmp_path / "x.gguf"
    path.write_bytes(data)
    assert control_vector_problem(path) is not None
    assert control_vector_problem(control_vector(tmp_path / "ok.gguf")) is None
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.gguf"
        os.mkfifo(fifo)
        assert control_vector_problem(fifo) == "it is not a regular file"  # and no wait


def test_import_never_replaces_the_bundle_that_holds_its_source(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    first = control_vector(tmp_path / "cv.gguf")
    dest = tmp_path / "out"
    assert run(capsys, "import", first, dest, "--num-layers", "4")[0] == 0
    inner = control_vector(dest / "cv.gguf", seed=3)  # a file the user keeps in the bundle
    before = tree(dest)
    code, doc = run(capsys, "import", inner, dest, "--num-layers", "4", "--force")
    assert code == 1 and codes(doc) == ["DESTINATION_IS_SOURCE"]
    assert tree(dest) == before


def test_signing_the_current_directory_keeps_the_temporary_outside_it(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    bundle: Path,
    keys: dict[str, tuple[Path, Path]],
) -> None:
    monkeypatch.chdir(bundle)
    inside_at_commit: list[list[str]] = []
    another_writer(monkeypatch, lambda dest: inside_at_commit.append(os.listdir(bundle)))
    code, doc = run(capsys, "sign", ".", "--private-key", keys["alice"][0])
    assert code == 0, doc
    assert inside_at_commit and not [n for n in inside_at_commit[0] if n.startswith(".")]
    assert read_bundle_dir(bundle).ok


def test_writing_to_the_current_directory_stages_beside_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``asa import SRC . --force`` inside a bundle: the new bundle is staged beside it."""
    source = control_vector(tmp_path / "cv.gguf")
    dest = tmp_path / "out"
    assert run(capsys, "import", source, dest, "--num-layers", "4")[0] == 0
    monkeypatch.chdir(dest)
    staged_in: list[Path] = []
    real = destination.Staging.__init__

    def spy(self: destination.Staging, where: Path) -> None:
        real(self, where)
        staged_in.append(self.tmp.parent)

    monkeypatch.setattr(destination.Staging, "__init__", spy)
    code, doc = run(capsys, "import", source, ".", "--num-layers", "4", "--force", "--name", "v2")
    assert code == 0, doc
    assert staged_in == [tmp_path]
    manifest = json.loads((dest / C.MANIFEST_FILE).read_text())
    assert [iv["name"] for iv in manifest["interventions"]] == ["v2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv.gguf", "out"]
