"""String patterns have JSON Schema semantics: nothing matches before a final newline.

Python's ``re`` ``$`` matches at the end *or before a final newline*, so
``^[a-z]+$`` accepts ``"valid\\n"``; a JSON Schema (ECMA-262) pattern never
does. Every pattern of the manifest schema, and every regular expression in
the code that validates a string, is run against a valid example and against
the same example followed by ``"\\n"`` (and other trailing and leading
junk): the first must match, the others must not. A new pattern anywhere in
the code fails :func:`test_every_regex_in_the_code_is_classified` until it
is classified here. Then names, model types and hints that end in a newline
are refused at every entry point, and ``asa inspect`` never prints a raw
newline that a bundle string brought.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from asa_format import BundleContents, InterventionData, ModelBinding, save_bundle
from asa_format import constants as C
from asa_format.errors import AsaError, BundleError, UsageError
from asa_format.format.manifest import Provenance, manifest_schema, parse_manifest
from asa_format.format.schema import SchemaError, ecma_regex
from asa_format.format.textrules import is_label
from asa_format.interop import ImportBinding, import_source
from asa_format.interop.svec import parse_svec
from asa_format.testing import make_test_bundle

ROOT = Path(__file__).resolve().parents[1]
JUNK = ("\n", "\r\n", "\x00", "\x7f", "\t")

# -- the schema's patterns --------------------------------------------------------------------

# a valid example for every pattern of the schema (keyed by the pattern text)
SCHEMA_EXAMPLES = {
    "^(0|[1-9][0-9]{0,3})\\.(0|[1-9][0-9]{0,3})$": "1.1",
    "^probe_(0|[1-9][0-9]{0,3})\\.onnx$": "probe_12.onnx",
    "^[^\\u0000-\\u001f\\u007f]+$": "llama",
    "^(vectors\\.safetensors|scaler\\.onnx|router\\.onnx|probe_(0|[1-9][0-9]{0,3})\\.onnx|interventions\\.safetensors|README\\.md)$": "README.md",
    "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$": "honesty-2",
    "^[0-9a-f]{64}$": "0" * 64,
}


def _schema_patterns(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield node["pattern"]
        for value in node.values():
            yield from _schema_patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schema_patterns(value)


def test_every_schema_pattern_refuses_a_final_newline() -> None:
    patterns = set(_schema_patterns(manifest_schema()))
    assert patterns == set(SCHEMA_EXAMPLES), sorted(patterns ^ set(SCHEMA_EXAMPLES))
    for pattern, example in SCHEMA_EXAMPLES.items():
        compiled = ecma_regex(pattern)
        assert compiled.search(example), pattern
        assert re.search(pattern, example + "\n"), (
            "Python's re accepts it: the check is not vacuous"
        )
        for junk in JUNK:
            assert compiled.search(example + junk) is None, (pattern, junk)
            assert compiled.search(junk + example) is None, (pattern, junk)


def test_the_translation_refuses_syntax_whose_meaning_differs() -> None:
    for pattern in ("^\\d+$", "^\\w+$", "\\s", "\\bx", "(?P<n>x)", "(?i)x", "[]", "[^]", "x\\"):
        with pytest.raises(SchemaError):
            ecma_regex(pattern)
    assert ecma_regex("^a.b$").search("a\rb") is None  # ECMA-262 '.' is not a line terminator
    assert ecma_regex("^a.b$").search("a-b")
    assert ecma_regex("^[$]$").search("$")  # '$' in a class stays a literal


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("model", "type"), "llama\n"),
        (("model", "id"), "org/model\n"),
        (("producer", "name"), "asa-format\n"),
        (("domains", 0, "name"), "math\n"),
        (("domains", 1, "name"), "\n"),
        (("format_version",), "1.1\n"),
        (("provenance", "tool", "version"), "1.0\n"),
    ],
)
def test_manifest_strings_ending_in_a_newline_are_refused(
    tmp_path: Path, path: tuple[Any, ...], value: str
) -> None:
    bundle = make_test_bundle(tmp_path / "b")
    doc = json.loads((bundle / C.MANIFEST_FILE).read_bytes())
    doc.setdefault("provenance", {"source": "other"}).setdefault(
        "tool", {"name": "t", "version": "1"}
    )
    assert parse_manifest(json.dumps(doc).encode())[1] == []
    target: Any = doc
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    manifest, errors, _ = parse_manifest(json.dumps(doc).encode())
    assert manifest is None and [e.code for e in errors] == ["MANIFEST_SCHEMA"], errors


# -- the code's patterns --------------------------------------------------------------------

SOURCES = sorted(
    [
        p
        for p in (ROOT / "asa_format").rglob("*.py")
        if p.parent.name not in ("converters", "runtime")
    ]
    + list((ROOT / "converters").rglob("*.py"))
    + list((ROOT / "runtime").rglob("*.py"))
    + list((ROOT / "benchmarks").rglob("*.py"))
    + list((ROOT / "examples").rglob("*.py"))
)
RE_FUNCS = {
    "compile",
    "match",
    "fullmatch",
    "search",
    "sub",
    "subn",
    "split",
    "findall",
    "finditer",
}

# Validators: pattern text -> (how the code applies it, a valid example). The example must
# match; the example with junk after it (a final newline first of all) or before it must not.
VALIDATORS: dict[str, tuple[str, str]] = {
    r"direction\.(0|[1-9][0-9]{0,4})": ("fullmatch", "direction.12"),
    r"0|[1-9][0-9]{0,4}": ("fullmatch", "12"),
    r"sha256:[0-9a-f]{64}": ("fullmatch", "sha256:" + "a" * 64),
    r"[0-9a-f]{64}": ("fullmatch", "b" * 64),
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z": ("match", "honesty_2"),
    r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})@(?P<rev>[A-Za-z0-9][A-Za-z0-9_./-]{0,127})\Z": (
        "match",
        "org/name@main",
    ),
    r"^[0-9a-f]{40}\Z": ("match", "c" * 40),
    r"^(manifest\.json|vectors\.safetensors|scaler\.onnx|router\.onnx|probe_(0|[1-9][0-9]{0,3})\.onnx|interventions\.safetensors|README\.md|model\.sig)\Z": (
        "match",
        "model.sig",
    ),
    r"[0-9]{1,4}\.[0-9]{1,4}([.+\-a-zA-Z0-9]{0,48})": ("fullmatch", "1.6.1"),
    r"(f4|f8|i4|i8|b1|O8|O4|U[1-9][0-9]{0,4})": ("fullmatch", "U12"),
    r"[0-9A-Fa-f]{4}": ("fullmatch", "00aF"),
    r"(token_id|token_index|token_ids)\Z": ("search", "bos_token_id"),
}
# Patterns that find, replace or read a prefix, and never decide whether a whole string is valid.
NOT_VALIDATORS: dict[str, str] = {
    r'"(?:[^"\\]|\\.)*"': "finds JSON strings to skip them when counting brackets",
    r"[^A-Za-z0-9_.-]+": "replaces characters a name cannot hold (safe_name)",
    r"(\S+) / \1(?!\S)": "rewrites a hint",
    r"models--([^/\\]+)--([^/\\]+)": "finds a hub cache folder inside a path",
    r"models--([^/\\]+)--([^/\\]+)[/\\]snapshots[/\\][^/\\]+\Z": "a hub snapshot folder at a path's end (search)",
    r"^\s*([0-9]{1,6})\.([0-9]{1,6})(?![0-9])": "reads the major.minor prefix of a version",
}
# Patterns built at run time: file -> what they are (checked by their own tests).
DYNAMIC = {
    "asa_format/format/jsonio.py": "character classes of lone surrogates and non-characters (search)",
    "asa_format/cli/textsafe.py": "character classes of code points to escape (sub)",
    "asa_format/hints.py": "a flag name to rewrite in a hint (sub)",
    "asa_format/format/schema.py": "the translation of a schema pattern (ecma_regex, tested above)",
    "asa_format/storage/destination.py": "a temporary name of our own, with re.escape (fullmatch)",
    "benchmarks/tiny_configs.py": "config attribute rules, a tuple of literals (search; checked below)",
}


def _regex_literals() -> list[tuple[str, int, str | None]]:
    """(file, line, pattern or None if built at run time) of every re.<func>(pattern, ...)."""
    found: list[tuple[str, int, str | None]] = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in RE_FUNCS
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "re"
                and node.args
            ):
                continue
            arg = node.args[0]
            literal = (
                arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None
            )
            found.append((path.relative_to(ROOT).as_posix(), node.lineno, literal))
    return found


def _tiny_config_rules() -> list[str]:
    tree = ast.parse((ROOT / "benchmarks" / "tiny_configs.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "_RULES":
            return [
                c.value
                for c in ast.walk(node)
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            ]
    raise AssertionError("benchmarks/tiny_configs.py has no _RULES")


def test_every_regex_in_the_code_is_classified() -> None:
    literals = _regex_literals()
    assert len(literals) > 10  # the scan sees the tree
    unknown = [
        f"{file}:{line}: {pattern!r}"
        for file, line, pattern in literals
        if (pattern is None and file not in DYNAMIC)
        or (pattern is not None and pattern not in VALIDATORS and pattern not in NOT_VALIDATORS)
    ]
    assert not unknown, "classify these patterns in tests/test_patterns.py:\n" + "\n".join(unknown)


def _unescaped_dollar(pattern: str) -> bool:
    """Whether ``pattern`` has a ``$`` anchor (outside a class, not escaped)."""
    i, in_class = 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            in_class = True
        elif ch == "]":
            in_class = False
        elif ch == "$" and not in_class:
            return True
        i += 1
    return False


def test_no_regex_in_the_code_anchors_with_dollar() -> None:
    """``$`` matches before a final newline in Python: the code anchors with ``\\Z`` or fullmatch."""
    patterns = [(f, line, p) for f, line, p in _regex_literals() if p is not None]
    patterns += [("benchmarks/tiny_configs.py", 0, p) for p in _tiny_config_rules()]
    anchored = [f"{f}:{line}: {p!r}" for f, line, p in patterns if _unescaped_dollar(p)]
    assert not anchored, "\n".join(anchored)


@pytest.mark.parametrize("pattern", sorted(VALIDATORS))
def test_every_code_validator_refuses_junk_around_a_valid_value(pattern: str) -> None:
    method, example = VALIDATORS[pattern]
    compiled = re.compile(pattern)
    apply = getattr(compiled, method)
    assert apply(example), (pattern, example)
    for junk in JUNK:
        if method == "search":  # a suffix rule: what may follow the suffix is nothing at all
            assert apply(example + junk) is None, (pattern, junk)
            continue
        assert apply(example + junk) is None, (pattern, junk)
        assert apply(junk + example) is None, (pattern, junk)


# -- entry points: a trailing newline is refused wherever a name or a type comes in ---------


def test_gguf_hint_svec_type_options_and_config_ending_in_a_newline_are_refused(
    tmp_path: Path,
) -> None:
    from gguf_bytes import gguf_file  # tests/gguf_bytes.py: a writer independent of the reader

    hint_nl = tmp_path / "hint.gguf"
    hint_nl.write_bytes(gguf_file(hint="llama\n"))
    with pytest.raises(AsaError) as info:
        import_source(hint_nl)
    assert info.value.code == "IMPORT_INVALID" and "model_hint" in info.value.message
    ok = tmp_path / "ok.gguf"
    ok.write_bytes(gguf_file(hint="llama"))
    assert import_source(ok).model.type == "llama"

    svec = {"model_type": "llama\n", "directions": {"2": [0.5, 0.5]}}
    with pytest.raises(AsaError) as info:
        parse_svec(svec)
    assert info.value.code == "IMPORT_INVALID"
    for key in ("2\n", " 2", "2 ", "02", "+2", "2.0", "\u0662", "1e1", ""):
        doc = {"model_type": "llama", "directions": {"3": [0.5, 0.5], key: [0.25, 0.25]}}
        with pytest.raises(AsaError) as info:
            parse_svec(doc)
        assert info.value.code == "IMPORT_INVALID", key

    for kwargs in ({"model_type": "llama\n"}, {"model_id": "org/m\n"}, {"model_type": ""}):
        with pytest.raises(UsageError):
            ImportBinding(**kwargs)  # type: ignore[arg-type]

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama\n", "hidden_size": 2}))
    with pytest.raises(AsaError) as info:
        import_source(ok, ImportBinding(model_dir=model))
    assert info.value.code == "IMPORT_BINDING"

    assert not is_label("llama\n") and is_label("llama") and not is_label("x" * 129)


def test_an_intervention_name_ending_in_a_newline_is_refused(tmp_path: Path) -> None:
    contents = BundleContents(
        model=ModelBinding(hidden_size=2),
        interventions=[InterventionData("honesty\n", {1: np.ones(2, np.float32)})],
    )
    with pytest.raises(BundleError) as info:
        save_bundle(contents, tmp_path / "b")
    assert info.value.code == "MANIFEST_SCHEMA"
    assert not (tmp_path / "b").exists()


def test_inspect_never_prints_a_raw_newline_from_a_bundle_string(tmp_path: Path) -> None:
    """provenance.metadata is free-form: its keys may hold anything; the text report escapes them."""
    contents = BundleContents(
        model=ModelBinding(hidden_size=2),
        interventions=[InterventionData("honesty", {1: np.ones(2, np.float32)})],
        provenance=Provenance(
            source="other",
            metadata={"evil\nFAKE LINE": 1, "bell\x07": 2, "rtl\u202eoverride": 3},
        ),
        card=False,
    )
    bundle = save_bundle(contents, tmp_path / "b")
    proc = subprocess.run(
        [sys.executable, "-m", "asa_format.cli", "inspect", str(bundle)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "FAKE LINE" in proc.stdout
    assert not any(line.startswith("FAKE LINE") for line in proc.stdout.splitlines())
    assert "evil\\x0aFAKE LINE" in proc.stdout
    assert "\x07" not in proc.stdout and "\u202e" not in proc.stdout
