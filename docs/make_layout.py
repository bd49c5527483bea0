"""Write docs/layout.md, the repository layout, from the tree itself.

    python docs/make_layout.py            # print the page
    python docs/make_layout.py --write    # write docs/layout.md
    python docs/make_layout.py --check    # exit 1 if docs/layout.md is not what the tree gives

Every module of the package is listed once, by its real path, with the first
line of its docstring; a package folder with the first line of its
``__init__.py`` docstring; a folder linked into the package (a symbolic link)
once, where it lives. Folders and files without a docstring take their
description from :data:`DESCRIPTIONS`; a path there that does not exist, or
a listed path without a description, is an error, so the page cannot list a
file twice, a file that does not exist, or miss one. tests/test_layout.py
checks that docs/layout.md is up to date.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "layout.md"
PACKAGE = "asa_format"
SKIP = {"__pycache__"}
BUILT = {".so", ".pyd"}  # compiled extensions an install leaves in the tree (not tracked)

# what has no docstring to say it: data folders and files, and the top-level folders
DESCRIPTIONS = {
    "asa_format/schema/": "the packaged copy of `spec/manifest.schema.json` (byte-identical)",
    "asa_format/py.typed": "marks the package as typed (PEP 561)",
    "asa_format/graphs/_lane.c": "the fast path's one-row lane in C: an optional extension (built by `setup.py`; used through `native.py`)",
    "asa_format/graphs/_lane.pyi": "the type stub of the `_lane` extension",
    "setup.py": "the optional C extension (`asa_format/graphs/_lane.c`); everything else is in `pyproject.toml`",
    "README.md": "what and why, set-up, install, quick start",
    "SECURITY.md": "what is bounded, and how to report a vulnerability",
    "pyproject.toml": "the package, its extras, and the settings of pytest, ruff and mypy",
    ".pre-commit-hooks.yaml": "the `asa-validate` pre-commit hook",
    ".ci/": "CI: `run` (the entry point: tests, ruff, mypy, the oldest transformers), `interop.sh` (repeng, steering-vectors), `llama_cpp.sh` (llama.cpp applies an exported vector), `vllm.sh` (the vLLM plugin on vLLM's CPU build)",
    "benchmarks/": "performance measurements against the legacy pickle path (`python -m benchmarks`; see `benchmarks/README.md`); `hostile.py`: the worst-case inputs of spec 12.4",
    "benchmarks/results/": "the committed results that docs/performance.md quotes",
    "docs/": "user documentation; `layout.md`, this page, is written by `make_layout.py`",
    "examples/": "the inputs of the README and the docs",
    "examples/asa_assets/": "a legacy ASA bundle as the reference pipeline writes it (pickles, npz, config.json): hidden size 48, layer 4, four domains",
    "examples/messages.json": "a chat conversation with tools, for `asa run --messages`",
    "examples/fit_data/": "a small labelled data set in Liquid-ASA's layout, for `asa fit` (written by `make_fit_data.py`)",
    "examples/fit_pairs.jsonl": "contrastive pairs for `asa fit --kind always|condition` (written by `make_fit_data.py`)",
    "examples/fit_system.txt": "the system prompt of the `asa fit` example",
    "examples/control_vector.gguf": "a llama.cpp control vector for the tiny model (written by `make_interop_examples.py`)",
    "examples/steering.svec": "an IBM activation-steering file for the tiny model (written by `make_interop_examples.py`)",
    "spec/": "the specification (`SPEC.md`, `signing.md`, `implementing.md`) and the JSON Schema; see `spec/README.md`",
    "spec/conformance/": "conformance cases, their generator `make_cases.py` and `decision_vectors.py`",
    "tests/": "the test suite; `conftest.py` holds the markers and shared builders; `fuzz_*.py`: fuzz targets, mutators and the long fuzzing run",
    "tests/fixtures/": "legacy and hostile pickle fixtures and the scripts that made them",
}
# folders whose every entry is listed (the package's are listed module by module)
LISTED = ("examples", "docs")


def _first_line(text: str | None) -> str | None:
    if not text or not text.strip():
        return None
    line = text.strip().splitlines()[0].strip()
    return line.replace("``", "`").replace("|", "\\|")


def _docstring(path: Path) -> str | None:
    return _first_line(ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))))


def _markdown_title(path: Path) -> str | None:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return _first_line(line[2:])
    return None


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() + ("/" if path.is_dir() else "")


def _describe(path: Path) -> str:
    key = _rel(path)
    if key in DESCRIPTIONS:
        return DESCRIPTIONS[key]
    found = None
    if path.is_dir() and (path / "__init__.py").is_file():
        found = _docstring(path / "__init__.py")
    elif path.suffix == ".py":
        found = _docstring(path)
    elif path.suffix == ".md":
        found = _markdown_title(path)
    if found is None:
        raise SystemExit(
            f"make_layout: {key} has no docstring or title; describe it in DESCRIPTIONS"
        )
    return found


def _package_rows(folder: Path, seen: set[Path]) -> Iterator[tuple[str, str]]:
    """A package folder, then its modules and sub-folders; a linked folder where it lives."""
    real = folder.resolve()
    if real in seen:
        return
    seen.add(real)
    yield _rel(real), _describe(real)
    links: list[tuple[Path, Path]] = []
    for entry in sorted(folder.iterdir(), key=lambda p: (p.is_dir(), p.name)):
        if entry.name in SKIP or entry.name.startswith(".") or entry.suffix in BUILT:
            continue
        if entry.is_symlink() and entry.is_dir():
            target = entry.resolve()
            if ROOT not in target.parents:
                raise SystemExit(f"make_layout: {_rel(entry)} links outside the repository")
            links.append((entry, target))
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            yield from _package_rows(entry, seen)
        elif entry.is_dir():  # a data folder: one row
            yield _rel(entry), _describe(entry)
        elif entry.suffix == ".py" and entry.name != "__init__.py":
            yield _rel(entry), _describe(entry)
        elif entry.suffix != ".py":
            yield _rel(entry), _describe(entry)
    for entry, target in links:
        yield (
            entry.relative_to(ROOT).as_posix(),
            f"a symbolic link to `{_rel(target)}`: imported as `{'.'.join(entry.relative_to(ROOT).parts)}`",
        )
        yield from _package_rows(target, seen)


def _tracked_top_level_folders() -> set[str]:
    """Top-level folders git tracks (empty when this is not a git checkout)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {name.split("/")[0] + "/" for name in listed.split("\0") if "/" in name}


def _top_level_rows(linked: set[str]) -> Iterator[tuple[str, str]]:
    """The described top-level files and folders; ``linked``: folders the package walk listed."""
    keys = sorted(k for k in DESCRIPTIONS if not k.startswith(PACKAGE))
    undescribed = sorted(_tracked_top_level_folders() - set(keys) - {f"{PACKAGE}/"} - linked)
    if undescribed:
        raise SystemExit(f"make_layout: describe these folders in DESCRIPTIONS: {undescribed}")
    done: set[str] = set()
    for key in keys:
        path = ROOT / key
        if not os.path.lexists(path):
            raise SystemExit(f"make_layout: {key} is described but does not exist")
        if key not in done:
            done.add(key)
            yield key, DESCRIPTIONS[key]
        if key.rstrip("/") in LISTED:
            for entry in sorted(path.iterdir()):
                if entry.name in SKIP or entry.name.startswith(".") or entry == PAGE:
                    continue
                done.add(_rel(entry))
                yield _rel(entry), _describe(entry)


def rows() -> list[tuple[str, str]]:
    listed = list(_package_rows(ROOT / PACKAGE, set()))
    linked = {p for p, _ in listed if p.endswith("/") and not p.startswith(PACKAGE)}
    listed += list(_top_level_rows(linked))
    paths = [p for p, _ in listed]
    duplicates = sorted({p for p in paths if paths.count(p) > 1})
    if duplicates:
        raise SystemExit(f"make_layout: listed twice: {duplicates}")
    missing = [p for p in paths if not os.path.lexists(ROOT / p.rstrip("/"))]
    if missing:
        raise SystemExit(f"make_layout: listed but missing: {missing}")
    unused = [k for k in DESCRIPTIONS if not os.path.lexists(ROOT / k.rstrip("/"))]
    if unused:
        raise SystemExit(f"make_layout: described but missing: {unused}")
    return listed


def page() -> str:
    lines = [
        "# Repository layout",
        "",
        "Every module of the package and every top-level folder, one row each,",
        "generated from the tree by `python docs/make_layout.py --write` (module",
        "descriptions are the first lines of their docstrings; `tests/test_layout.py`",
        "checks that this page is up to date).",
        "",
        "| path | what |",
        "| --- | --- |",
    ]
    lines += [f"| `{path}` | {what} |" for path, what in rows()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write {_rel(PAGE)}")
    group.add_argument("--check", action="store_true", help=f"exit 1 if {_rel(PAGE)} differs")
    args = parser.parse_args()
    text = page()
    if args.write:
        PAGE.write_text(text, encoding="utf-8")
        print(f"wrote {_rel(PAGE)}")
    elif args.check:
        current = PAGE.read_text(encoding="utf-8") if PAGE.is_file() else ""
        if current != text:
            print(f"{_rel(PAGE)} is out of date: run python docs/make_layout.py --write")
            return 1
        print(f"{_rel(PAGE)} is up to date")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
