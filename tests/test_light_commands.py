"""`asa validate`, `asa inspect` and `asa verify` import none of the heavy packages.

Each command runs in a fresh interpreter (the installed entry point's
``main``) on a valid bundle and on an invalid one; afterwards none of onnx,
ml_dtypes, onnxruntime, torch, transformers or sklearn may be in
``sys.modules``. (Their speed is measured by ``python -m benchmarks``.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from asa_format.signing import load_private_key, sign_bundle
from asa_format.testing import make_test_bundle

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("onnx", "ml_dtypes", "onnxruntime", "torch", "transformers", "sklearn")
_PROBE = """
import json, sys
from asa_format.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
heavy = %r
print(json.dumps({"exit": code, "loaded": [m for m in heavy if m in sys.modules],
                  "numpy": "numpy" in sys.modules}))
"""


def _run(*args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE % (HEAVY,), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    doc: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, tuple[Path, Path]]) -> Path:
    bundle = make_test_bundle(tmp_path_factory.mktemp("light") / "b", hidden_size=8)
    sign_bundle(bundle, load_private_key(keys["alice"][0]))
    return bundle


INVALID = ROOT / "spec" / "conformance" / "invalid" / "onnx_op_not_allowlisted" / "bundle"


@pytest.mark.parametrize("command", ["validate", "inspect"])
def test_reading_commands_stay_light(command: str, signed: Path) -> None:
    ok = _run(command, str(signed))
    assert ok == {"exit": 0, "loaded": [], "numpy": True}  # the probe sees what was imported
    refused = _run(command, "--json", str(INVALID))
    assert refused == {"exit": 1, "loaded": [], "numpy": True}


def test_verify_stays_light(signed: Path, keys: dict[str, tuple[Path, Path]]) -> None:
    good = _run("verify", str(signed), "--public-key", str(keys["alice"][1]))
    assert (good["exit"], good["loaded"]) == (0, [])
    bad = _run("verify", str(signed), "--public-key", str(keys["mallory"][1]))
    assert (bad["exit"], bad["loaded"]) == (1, [])
