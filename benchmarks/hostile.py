"""Time and peak memory of the hostile corpus, one fresh process per case.

    python -m benchmarks.hostile [--only NAME ...] [--json out.json]

Each case builds one hostile input (the builders of tests/hostile_graphs.py
and tests/test_hostile_*.py), then runs the operation an attacker would
target (validate, load, convert, verify, parse) in a child process; the
table gives the outcome (error code), the wall time of the whole child and
its peak resident memory (``ru_maxrss`` from ``wait4``), interpreter and
imports included (about 150 MiB with onnxruntime).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PRELUDE = """
import sys, os, json, tempfile, io, pickle, struct, zipfile
sys.path[:0] = [{root!r}, {tests!r}]
import numpy as np
from pathlib import Path
from onnx import helper
from asa_format import constants as C
from asa_format.errors import AsaError
tmp = Path(tempfile.mkdtemp())
def outcome(fn):
    try:
        r = fn()
    except AsaError as e:
        print('refused:' + e.code); return
    codes = [p.code for p in getattr(r, 'problems', [])]
    print('refused:' + codes[0] if codes else 'ok')
"""

CASES: dict[str, str] = {
    "graph_concat_2200_inputs": """
from hostile_graphs import router_softmax, save_with
from asa_format.validate import validate_bundle
w = np.random.default_rng(0).standard_normal((8, 2))
extra = [helper.make_node('Concat', [C.CLASSIFIER_INPUT] * 2200, ['wide'], axis=1),
         helper.make_node('ReduceSum', ['wide', 'ax'], ['r'], keepdims=1), helper.make_node('Add', ['s', 'r'], ['s2'])]
p = save_with(tmp / 'b', router=router_softmax(w, np.zeros(2), extra, {'ax': np.array([1])}, scores='s2'))
outcome(lambda: validate_bundle(p))
""",
    "graph_concat_doubling_24": """
from hostile_graphs import router_softmax, save_with
from asa_format.validate import validate_bundle
w = np.random.default_rng(0).standard_normal((8, 2)); extra = []; cur = C.CLASSIFIER_INPUT
for i in range(24):
    extra.append(helper.make_node('Concat', [cur, cur], [f'c{i}'], axis=1)); cur = f'c{i}'
extra += [helper.make_node('ReduceSum', [cur, 'ax'], ['r'], keepdims=1), helper.make_node('Add', ['s', 'r'], ['s2'])]
p = save_with(tmp / 'b', router=router_softmax(w, np.zeros(2), extra, {'ax': np.array([1])}, scores='s2'))
outcome(lambda: validate_bundle(p))
""",
    "graph_250_square_matmuls_h512": """
from hostile_graphs import router_softmax, save_with
from asa_format.validate import validate_bundle
h = 512; w = np.random.default_rng(0).standard_normal((h, 2)); extra = []; cur = C.CLASSIFIER_INPUT
for i in range(250):
    extra.append(helper.make_node('MatMul', [cur, 'sq'], [f'm{i}'])); cur = f'm{i}'
extra += [helper.make_node('MatMul', [cur, 'W'], ['xw2']), helper.make_node('Add', ['xw2', 'b'], ['s2'])]
p = save_with(tmp / 'b', hidden=h, router=router_softmax(w, np.zeros(2), extra, {'sq': np.eye(h)}, scores='s2'))
outcome(lambda: validate_bundle(p))
""",
    "graph_constant_output_then_decide": """
from hostile_graphs import classifier_model, save_with
from asa_format import load_bundle
nodes = [helper.make_node('Constant', [], [C.CLASSIFIER_PROBABILITIES], value=helper.make_tensor('c', 11, (2, 2), [0.5] * 4)),
         helper.make_node('ArgMax', [C.CLASSIFIER_PROBABILITIES], [C.CLASSIFIER_LABEL], axis=1, keepdims=0)]
p = save_with(tmp / 'b', router=classifier_model(nodes, {}, 8, 2))
outcome(lambda: load_bundle(p).decide(np.zeros(8)))
""",
    "json_manifest_100k_levels": """
from asa_format.testing import make_test_bundle
from asa_format.validate import validate_bundle
p = make_test_bundle(tmp / 'b')
(p / C.MANIFEST_FILE).write_text('[' * 100000 + ']' * 100000)
outcome(lambda: validate_bundle(p))
""",
    "pickle_colliding_int_keys_30k": """
from asa_format.converters.safe_pickle import safe_load_pickle
body = bytearray(b'\\x80\\x02}(')
for k in range(1, 30001):
    raw = (k * ((1 << 61) - 1)).to_bytes(10, 'little', signed=True); body += b'\\x8a' + bytes([10]) + raw + b'K\\x00'
body += b'u.'
outcome(lambda: safe_load_pickle(bytes(body), filename='probes.pkl'))
""",
    "pickle_object_array_60k_x_10k": """
from asa_format.converters.safe_pickle import safe_load_pickle
data = pickle.dumps(np.array(['x' * 10000] * 60000, dtype=object), protocol=2)
outcome(lambda: safe_load_pickle(data, filename='router.pkl'))
""",
    "npz_deflate_bomb_256mib": """
from asa_format.converters.legacy import parse_steering_npz
buf = io.BytesIO()
with zipfile.ZipFile(buf, 'w', compression=zipfile.ZIP_DEFLATED) as zf, zf.open('a.npy', 'w', force_zip64=True) as m:
    z = bytes(1 << 20)
    for _ in range(256): m.write(z)
data = buf.getvalue(); del buf
outcome(lambda: parse_steering_npz(data, ['a']))
""",
    "verify_256gib_sparse_file": """
from asa_format.testing import make_test_bundle
from asa_format.signing import sign_bundle, verify_bundle_signature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
key = ec.generate_private_key(ec.SECP256R1())
(tmp / 'k.pem').write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
(tmp / 'k.pub').write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
p = make_test_bundle(tmp / 'b'); sign_bundle(p, tmp / 'k.pem')
with open(p / C.VECTORS_FILE, 'r+b') as f: f.truncate(256 << 30)
outcome(lambda: verify_bundle_signature(p, [tmp / 'k.pub']))
""",
    "convert_hidden_65536_parity_4096": """
from test_hostile_legacy import _wide_legacy
from asa_format.converters.convert import convert_legacy
_wide_legacy(tmp / 'legacy', 65536)
outcome(lambda: convert_legacy(tmp / 'legacy', tmp / 'out'))
""",
}


def run_case(name: str, timeout: float) -> dict[str, object]:
    """Run one case in a child; its outcome, wall time and peak RSS (``wait4``, POSIX)."""
    code = _PRELUDE.format(root=str(ROOT), tests=str(ROOT / "tests")) + CASES[name]
    t0 = time.perf_counter()
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"asa-hostile-{os.getpid()}-{name}.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    seconds = time.perf_counter() - t0
    text = out_path.read_text(errors="replace")
    out_path.unlink(missing_ok=True)
    lines = [line for line in text.splitlines() if line.strip()]
    timed_out = seconds >= timeout
    outcome = "timeout" if timed_out else (lines[-1] if lines else f"exit {status}")
    return {
        "case": name,
        "outcome": outcome[:120],
        "seconds": round(seconds, 2),
        "peak_mib": round(usage.ru_maxrss / 1024, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(CASES))
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for name in args.only or list(CASES):
        row = run_case(name, args.timeout)
        rows.append(row)
        print(
            f"{name:<36} {row['outcome']:<34} {row['seconds']:>8} s  {row['peak_mib']} MiB",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
