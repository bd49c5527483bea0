"""Long-running mutation fuzzer for the bundle reader (validate and load).

Each iteration takes a valid bundle from the conformance corpus, applies one
to three random mutations (byte flips, truncations, insertions, safetensors
header edits, manifest field edits, ONNX field edits, file deletion and
duplication; usually followed by re-hashing the manifest so the mutated file
reaches its parser), writes it to a work directory and runs
``validate_bundle`` and ``load_bundle``. Both must end in success or a clean
``AsaError`` and agree with each other; anything else is a finding.

Other targets (``--target``): ``onnx`` and ``pickle`` (graph and opcode
mutations), ``gguf`` and ``svec`` (structure-aware mutations of imported
steering files; their workers run under a 2 GiB address-space limit, so a
runaway allocation is a finding); see tests/fuzz_targets.py.

Usage::

    python tests/fuzz_long.py --iterations 100000 --workers 2 --findings out/fuzz
    python tests/fuzz_long.py --replay 1234 --seed 1        # rerun one iteration

Workers are subprocesses, so a native crash (e.g. in onnxruntime) is caught,
reported with its input, and the worker resumes after the crashing iteration.
Exit status: 0 no findings, 1 findings.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from asa_format import constants as C  # noqa: E402
from asa_format.bundle import load_bundle  # noqa: E402
from asa_format.errors import AsaError  # noqa: E402
from asa_format.format.jsonio import dumps_canonical  # noqa: E402
from asa_format.validate import validate_bundle  # noqa: E402

__all__ = [
    "DELETE",
    "JSON_VALUES",
    "MANIFEST_PATHS",
    "ONNX_EDITS",
    "SEEDS",
    "TRICKY_LITERALS",
    "Files",
    "delete",
    "duplicate",
    "exercise",
    "flip",
    "insert",
    "manifest_edit",
    "manifest_token",
    "onnx_edit",
    "random_mutation",
    "rehash",
    "seed_bundles",
    "st_header_edit",
    "st_header_length",
    "truncate",
    "write_bundle",
]

Files = dict[str, bytes]
SEEDS = (
    "domain_without_probe",
    "minimal_two_domains",
    "unicode_domain_names",
    "newer_minor_version",
)
DELETE = object()  # manifest_edit value: remove the member
MEMORY_LIMIT = 2 << 30  # address space of a gguf/svec worker


def seed_bundles() -> dict[str, Files]:
    """The valid corpus bundles the mutations start from."""
    corpus = ROOT / "spec" / "conformance" / "valid"
    return {
        name: {p.name: p.read_bytes() for p in sorted((corpus / name / "bundle").iterdir())}
        for name in SEEDS
    }


# --------------------------------------------------------------------------
# mutation operators (pure: files in, files out)


def flip(files: Files, name: str, pos: int, mask: int) -> Files:
    data = bytearray(files[name])
    if data:
        data[pos % len(data)] ^= mask or 1
    return {**files, name: bytes(data)}


def truncate(files: Files, name: str, length: int) -> Files:
    return {**files, name: files[name][: max(0, length)]}


def insert(files: Files, name: str, pos: int, data: bytes) -> Files:
    old = files[name]
    pos = pos % (len(old) + 1)
    return {**files, name: old[:pos] + data + old[pos:]}


def delete(files: Files, name: str) -> Files:
    return {k: v for k, v in files.items() if k != name}


def duplicate(files: Files, name: str, new_name: str) -> Files:
    return {**files, new_name: files[name]}


def rehash(files: Files) -> Files:
    """Make the manifest's size/sha256 agree with the files (if it still parses)."""
    import hashlib

    try:
        doc = json.loads(files[C.MANIFEST_FILE])
        for fname, entry in doc["files"].items():
            if fname in files and isinstance(entry, dict):
                entry["size"] = len(files[fname])
                entry["sha256"] = hashlib.sha256(files[fname]).hexdigest()
        return {**files, C.MANIFEST_FILE: dumps_canonical(doc)}
    except Exception:  # the manifest itself was mutated beyond repair: keep it
        return files


def _split_st(data: bytes) -> tuple[dict[str, Any] | None, bytes]:
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + n])
        return (header if isinstance(header, dict) else None), data[8 + n :]
    except Exception:
        return None, b""


def st_header_edit(files: Files, tensor: str | None, key: str, value: Any) -> Files:
    """Set ``header[tensor][key] = value`` (or ``header[key]`` when tensor is None)."""
    header, body = _split_st(files.get(C.VECTORS_FILE, b""))
    if header is None:
        return files
    target: Any = header
    if tensor is not None:
        target = header.setdefault(tensor, {})
        if not isinstance(target, dict):
            header[tensor] = target = {}
    if value is DELETE:
        target.pop(key, None)
    else:
        target[key] = value
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()
    text += b" " * (-len(text) % 8)
    return {**files, C.VECTORS_FILE: struct.pack("<Q", len(text)) + text + body}


def st_header_length(files: Files, length: int) -> Files:
    data = files.get(C.VECTORS_FILE, b"")
    return {**files, C.VECTORS_FILE: struct.pack("<Q", length % (1 << 64)) + data[8:]}


def manifest_edit(files: Files, path: list[str | int], value: Any) -> Files:
    """Set (or delete, with DELETE) the manifest member at ``path``."""
    try:
        doc = json.loads(files[C.MANIFEST_FILE])
        target = doc
        for part in path[:-1]:
            target = target[part]
        last = path[-1]
        if value is DELETE:
            del target[last]
        elif isinstance(target, list) and isinstance(last, int) and last >= len(target):
            target.append(value)
        else:
            target[last] = value
        text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=True) + "\n"
        return {**files, C.MANIFEST_FILE: text.encode("utf-8")}
    except (KeyError, IndexError, TypeError, ValueError, RecursionError):
        return files  # the manifest no longer parses (or has no such member): leave it


TRICKY_LITERALS = (
    "1e400", "-1e400", "9" * 5000, "NaN", "-Infinity", '"1.\u00b2"', '"\u0661.0"', "01", "1_0", "0x10",
    '"\ud800"', "[" * 2000, "1.0e-400", "true", '"a\u0000b"', '"probe_0.onnx"', "{}", "-0",
)  # fmt: skip
_SCALAR = re.compile(rb'(?<=: )(-?[0-9][0-9.eE+-]*|"[^"\n]*"|true|false|null)(?=,?\n)')


def manifest_token(files: Files, occurrence: int, literal: str) -> Files:
    """Replace the text of one scalar value in the manifest by ``literal`` (raw JSON text)."""
    data = files.get(C.MANIFEST_FILE, b"")
    matches = list(_SCALAR.finditer(data))
    if not matches:
        return files
    m = matches[occurrence % len(matches)]
    return {
        **files,
        C.MANIFEST_FILE: data[: m.start()]
        + literal.encode("utf-8", "surrogatepass")
        + data[m.end() :],
    }


ONNX_EDITS = (
    "op_type",
    "dim",
    "init_dims",
    "attr_int",
    "elem_type",
    "drop_node",
    "swap_inputs",
    "opset",
    "ir_version",
)
OPS = (
    "Add",
    "Sub",
    "MatMul",
    "Softmax",
    "ArgMax",
    "Identity",
    "Reshape",
    "Concat",
    "Gemm",
    "Cast",
    "Sigmoid",
    "Flatten",
)


def onnx_edit(files: Files, name: str, kind: str, index: int, value: int) -> Files:
    """A structured edit of one field of graph ``name`` (parsed and re-serialized)."""
    import onnx

    model = onnx.ModelProto()
    try:
        model.ParseFromString(files[name])
    except Exception:
        return files
    g = model.graph
    nodes = g.node
    try:
        if kind == "op_type" and len(nodes):
            nodes[index % len(nodes)].op_type = OPS[value % len(OPS)]
        elif kind == "dim":
            vis = [*g.input, *g.output]
            dims = [d for vi in vis for d in vi.type.tensor_type.shape.dim]
            if dims:
                dims[index % len(dims)].dim_value = value
        elif kind == "init_dims" and len(g.initializer):
            t = g.initializer[index % len(g.initializer)]
            if len(t.dims):
                t.dims[index % len(t.dims)] = value
        elif kind == "attr_int":
            attrs = [a for n in nodes for a in n.attribute if a.type == onnx.AttributeProto.INT]
            if attrs:
                attrs[index % len(attrs)].i = value - 8
        elif kind == "elem_type":
            vis = [*g.input, *g.output]
            if vis:
                vis[index % len(vis)].type.tensor_type.elem_type = value % 17
        elif kind == "drop_node" and len(nodes):
            del nodes[index % len(nodes)]
        elif kind == "swap_inputs" and len(nodes):
            node = nodes[index % len(nodes)]
            node.input[:] = list(reversed(node.input))
        elif kind == "opset" and len(model.opset_import):
            model.opset_import[0].version = value % 30
        elif kind == "ir_version":
            model.ir_version = value % 14
    except (ValueError, TypeError, IndexError):
        return files
    return {**files, name: model.SerializeToString(deterministic=True)}


# --------------------------------------------------------------------------
# random mutations (the fast path of the long run)

JSON_VALUES: tuple[Any, ...] = (
    None, True, False, 0, 1, -1, 8, 7, 2**63, -(2**63), 1.5, 0.5, 1e308, float("nan"), float("inf"),
    "", "x", "global", "../x", "probe_0.onnx", "F32", "F16", [], [8], [0, 32], [0, 32, 64], {}, {"a": 1},
)  # fmt: skip
MANIFEST_PATHS: tuple[list[str | int], ...] = (
    ["format"], ["format_version"], ["producer"], ["producer", "name"], ["model", "hidden_size"], ["model", "id"],
    ["model", "type"], ["model", "num_layers"], ["layer", "index"], ["layer", "tensor"], ["steering", "alpha"],
    ["steering", "tau"], ["steering", "beta"], ["steering", "policy"], ["steering", "no_probe_probability"],
    ["domains"], ["domains", 0], ["domains", 0, "name"], ["domains", 0, "probe"], ["domains", 1, "probe"],
    ["domains", 9], ["files"], ["files", "vectors.safetensors"], ["files", "router.onnx", "size"],
    ["files", "scaler.onnx", "sha256"], ["files", "probe_0.onnx"], ["files", "../evil"], ["provenance"], ["extra"],
)  # fmt: skip


def random_mutation(rng: random.Random, files: Files) -> tuple[Files, str]:
    """Apply one random operator; return the files and a description."""
    names = sorted(files)
    name = rng.choice(names) if names else C.MANIFEST_FILE
    size = len(files.get(name, b""))
    op = rng.choices(
        [
            "flip",
            "truncate",
            "insert",
            "delete",
            "duplicate",
            "st_edit",
            "st_len",
            "manifest",
            "token",
            "onnx",
        ],
        weights=[25, 6, 6, 3, 3, 14, 4, 16, 6, 17],
    )[0]
    if not names:
        return files, "noop"
    if op == "flip":
        pos, mask = rng.randrange(max(size, 1)), rng.randrange(1, 256)
        return flip(files, name, pos, mask), f"flip({name},{pos},{mask})"
    if op == "truncate":
        length = rng.randrange(size + 1)
        return truncate(files, name, length), f"truncate({name},{length})"
    if op == "insert":
        pos = rng.randrange(size + 1)
        data = bytes(rng.randrange(256) for _ in range(rng.choice([1, 2, 4, 8, 17])))
        return insert(files, name, pos, data), f"insert({name},{pos},{data.hex()})"
    if op == "delete":
        return delete(files, name), f"delete({name})"
    if op == "duplicate":
        new = rng.choice(["probe_1.onnx", "probe_5.onnx", "x.bin", C.SIGNATURE_FILE, "router.onnx"])
        return duplicate(files, name, new), f"duplicate({name},{new})"
    if op == "st_edit":
        tensor = rng.choice([None, "__metadata__", "global", "math", "search", "zzz"])
        key = rng.choice(["dtype", "shape", "data_offsets", "extra", "format", "global"])
        value = rng.choice([*JSON_VALUES, DELETE])
        return st_header_edit(files, tensor, key, value), f"st_edit({tensor},{key},{value!r})"
    if op == "st_len":
        length = rng.choice(
            [0, 1, 7, 8, 64, 2**20, 2**20 + 1, 2**63, 2**64 - 1, rng.randrange(1 << 12)]
        )
        return st_header_length(files, length), f"st_len({length})"
    if op == "manifest":
        path = list(rng.choice(MANIFEST_PATHS))
        value = rng.choice([*JSON_VALUES, DELETE])
        return manifest_edit(files, path, value), f"manifest({path},{value!r})"
    if op == "token":
        occurrence, literal = rng.randrange(64), rng.choice(TRICKY_LITERALS)
        return manifest_token(files, occurrence, literal), f"token({occurrence},{literal[:12]!r})"
    graphs = [n for n in names if n.endswith(".onnx")]
    if not graphs:
        return files, "noop"
    gname, kind = rng.choice(graphs), rng.choice(ONNX_EDITS)
    index, value = (
        rng.randrange(64),
        rng.choice([0, 1, 2, 3, 7, 9, 16, 17, 100, 2**31, rng.randrange(64)]),
    )
    return onnx_edit(files, gname, kind, index, value), f"onnx({gname},{kind},{index},{value})"


def mutate(rng: random.Random, files: Files) -> tuple[Files, list[str]]:
    steps: list[str] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        files, step = random_mutation(rng, files)
        steps.append(step)
    if rng.random() < 0.7:
        files = rehash(files)
        steps.append("rehash")
    return files, steps


# --------------------------------------------------------------------------
# the property


def write_bundle(files: Files, directory: Path) -> Path:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return directory


def exercise(bundle: Path) -> str:
    """Validate and load ``bundle``; return "ok" or "refused:<CODE>".

    Raises AssertionError when validate and load disagree, and lets any
    exception other than AsaError through: both are findings.
    """
    report = validate_bundle(bundle)
    try:
        loaded = load_bundle(bundle)
    except AsaError as exc:
        assert not report.ok, f"validate says ok, load refuses with {exc.code}"
        assert report.problems[0].code == exc.code, (
            f"validate {report.problems[0].code} != load {exc.code}"
        )
        return f"refused:{exc.code}"
    assert report.ok, f"load succeeds, validate reports {[p.code for p in report.problems]}"
    try:
        hidden = np.linspace(-1.0, 1.0, 3 * loaded.hidden_size, dtype=np.float32).reshape(3, -1)
        loaded.decide(hidden)
        for domain in loaded.domains:
            loaded.steering_vector(domain)
    except AsaError as exc:
        return f"ok-decide-refused:{exc.code}"
    return "ok"


# --------------------------------------------------------------------------
# driver


def _iteration_rng(seed: int, i: int) -> random.Random:
    return random.Random(seed * 1_000_003 + i)


def run_iteration(
    seeds: Any, seed: int, i: int, work: Path, target: str = "bundle"
) -> tuple[str, list[str], str | None]:
    rng = _iteration_rng(seed, i)
    if target != "bundle":  # the structure-aware targets of tests/fuzz_targets.py
        import fuzz_targets as ft

        t0 = time.monotonic()
        steps: list[str] = []
        try:
            if target == "onnx":
                outcome, steps = ft.onnx_iteration(rng, seeds, work, rehash, write_bundle, steps)
            elif target == "gguf":
                outcome, steps = ft.gguf_iteration(rng, seeds, work, steps)
            elif target == "svec":
                outcome, steps = ft.svec_iteration(rng, seeds, work, steps)
            else:
                outcome, steps = ft.pickle_iteration(rng, seeds, steps)
        except Exception:
            return "finding", steps, traceback.format_exc()
        elapsed = time.monotonic() - t0
        if elapsed > ft.SLOW_SECONDS:
            return "finding", steps, f"slow: {elapsed:.1f}s"
        return outcome, steps, None
    base = rng.choice(SEEDS)
    try:
        files, steps = mutate(rng, seeds[base])
    except Exception:  # a bug of the fuzzer, not of the reader: report it as such
        return "finding", [base, "mutator error"], traceback.format_exc()
    write_bundle(files, work)
    try:
        return exercise(work), [base, *steps], None
    except Exception:
        return "finding", [base, *steps], traceback.format_exc()


def target_seeds(target: str) -> Any:
    import fuzz_targets as ft

    if target == "pickle":
        return ft.pickle_seeds()
    if target == "gguf":
        return ft.gguf_seeds()
    if target == "svec":
        return ft.svec_seeds()
    return seed_bundles()


def worker(
    seed: int,
    start: int,
    count: int,
    work: Path,
    progress: Path,
    result: Path,
    target: str = "bundle",
) -> None:
    if target in ("gguf", "svec"):  # bounded memory: a runaway allocation is a MemoryError finding
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    seeds = target_seeds(target)
    outcomes: dict[str, int] = {}
    findings: list[dict[str, Any]] = []
    for i in range(start, start + count):
        progress.write_text(str(i))  # one small write: locates a native crash exactly
        outcome, steps, tb = run_iteration(seeds, seed, i, work / "bundle", target)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if tb is not None:
            findings.append({"iteration": i, "steps": steps, "traceback": tb})
    result.write_text(json.dumps({"outcomes": outcomes, "findings": findings}))


def _run_chunk(
    args: argparse.Namespace, start: int, count: int, wid: int, findings_dir: Path
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    work = findings_dir / f".work{wid}"
    work.mkdir(parents=True, exist_ok=True)
    progress, result = work / "progress", work / "result.json"
    outcomes: dict[str, int] = {}
    findings: list[dict[str, Any]] = []
    end = start + count
    while start < end:
        result.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--worker", "--seed", str(args.seed), "--start", str(start),
               "--count", str(end - start), "--work", str(work), "--target", args.target]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode == 0 and result.exists():
            doc = json.loads(result.read_text())
            for k, v in doc["outcomes"].items():
                outcomes[k] = outcomes.get(k, 0) + v
            findings.extend(doc["findings"])
            break
        crashed_at = int(progress.read_text()) if progress.exists() else start
        keep = findings_dir / f"crash-{args.seed}-{crashed_at}"
        if (work / "bundle").exists():
            shutil.copytree(work / "bundle", keep, dirs_exist_ok=True)
        findings.append(
            {
                "iteration": crashed_at,
                "steps": ["native crash"],
                "traceback": f"worker exit {proc.returncode}\n{proc.stderr[-2000:]}",
            }
        )
        outcomes["native-crash"] = outcomes.get("native-crash", 0) + 1
        start = crashed_at + 1
    return outcomes, findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mutation fuzzer for asa bundles")
    parser.add_argument("--iterations", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=2_500)
    parser.add_argument("--findings", type=Path, default=ROOT / "out" / "fuzz")
    parser.add_argument(
        "--target",
        choices=("bundle", "onnx", "pickle", "gguf", "svec"),
        default="bundle",
        help="bundle: byte/field mutations of bundles; onnx: graph mutations; pickle: opcode "
        "mutations; gguf, svec: structure-aware mutations of imported steering files",
    )
    parser.add_argument(
        "--replay", type=int, help="run one iteration and print its steps and outcome"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker(
            args.seed,
            args.start,
            args.count,
            args.work,
            args.work / "progress",
            args.work / "result.json",
            args.target,
        )
        return 0
    if args.replay is not None:
        work = args.findings / "replay"
        outcome, steps, tb = run_iteration(
            target_seeds(args.target), args.seed, args.replay, work, args.target
        )
        print(f"iteration {args.replay}: {' -> '.join(steps)}\noutcome: {outcome}\nbundle: {work}")
        if tb:
            print(tb)
        return 1 if tb else 0

    from concurrent.futures import ThreadPoolExecutor

    args.findings.mkdir(parents=True, exist_ok=True)
    chunks = [
        (s, min(args.chunk, args.iterations - s)) for s in range(0, args.iterations, args.chunk)
    ]
    outcomes: dict[str, int] = {}
    findings: list[dict[str, Any]] = []
    done = 0
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        futures = [
            pool.submit(_run_chunk, args, s, n, k, args.findings) for k, (s, n) in enumerate(chunks)
        ]
        for fut, (_, n) in zip(futures, chunks, strict=True):
            chunk_outcomes, chunk_findings = fut.result()
            for outcome, count in chunk_outcomes.items():
                outcomes[outcome] = outcomes.get(outcome, 0) + count
            findings.extend(chunk_findings)
            done += n
            print(
                f"[{time.monotonic() - t0:7.1f}s] {done}/{args.iterations} iterations, {len(findings)} findings",
                flush=True,
            )
    for k in range(len(chunks)):
        shutil.rmtree(args.findings / f".work{k}", ignore_errors=True)
    (args.findings / "findings.json").write_text(json.dumps(findings, indent=2))
    print(
        f"target: {args.target}  iterations: {done}  seed: {args.seed}  time: {time.monotonic() - t0:.1f}s"
    )
    for outcome in sorted(outcomes, key=lambda o: (-outcomes[o], o)):
        print(f"  {outcomes[outcome]:>8}  {outcome}")
    print(f"findings: {len(findings)} (details in {args.findings / 'findings.json'})")
    for finding in findings[:20]:
        last = finding["traceback"].strip().splitlines()[-1]
        print(f"  iteration {finding['iteration']}: {' -> '.join(finding['steps'])}\n      {last}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
