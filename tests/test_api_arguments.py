"""Every public function outside the runtime, called with hostile arguments, from the caller's side.

For each function a valid call is built, then each of its parameters in turn
is replaced by values a careless or hostile caller passes: wrong types
(None, int, float, bytes, list, dict, an arbitrary object), out-of-range
numbers (negative, 10**30, NaN, infinities, bool for int), and hostile paths
(empty, NUL, a trailing newline, ``/dev/zero``, a FIFO, a directory). The
call must end in success or a coded :class:`~asa_format.errors.AsaError`:
never a TypeError, ValueError, OverflowError, AttributeError, a hang on the
FIFO or a read of ``/dev/zero``.
"""

from __future__ import annotations

import math
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import asa_format
from asa_format import (
    BundleContents,
    InterventionData,
    ModelBinding,
    load_bundle,
    load_interventions,
    read_bundle_contents,
    root_digest,
    save_bundle,
    validate_bundle,
)
from asa_format.errors import CODES, AsaError
from asa_format.interop import (
    ImportBinding,
    detect_kind,
    from_repeng,
    from_steering_vectors,
    import_file,
    import_source,
)
from asa_format.interop.export import export_gguf, plan_gguf
from asa_format.signing import (
    load_private_key,
    load_public_key,
    sign_bundle,
    verify_bundle_signature,
)
from asa_format.testing import make_test_bundle, make_test_contents

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")

H = 8


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


def hostile_values(world: World) -> list[Any]:
    return [
        None,
        True,
        0,
        -1,
        10**30,
        1.5,
        math.nan,
        math.inf,
        -math.inf,
        "",
        "a\x00b",
        "name\n",
        b"bytes",
        [],
        {},
        [1, "x", None],
        {"a": object()},
        _Opaque(),
        Path("/dev/zero"),
        str(world.fifo),
        str(world.root),
        np.float32("nan"),
        np.int64(-5),
    ]


@dataclass
class World:
    root: Path
    bundle: Path
    iv_bundle: Path
    fifo: Path
    private_pem: Path
    public_pem: Path
    svec: Path
    counter: list[int]

    def fresh(self) -> Path:
        self.counter[0] += 1
        return self.root / "out" / f"d{self.counter[0]}"


class _RepengLike:
    def __init__(self) -> None:
        self.model_type = "llama"
        self.directions = {1: np.ones(H, np.float32), 2: np.full(H, 0.5, np.float32)}


class _SteeringVectorLike:
    def __init__(self) -> None:
        self.layer_type = "decoder_block"
        self.layer_activations = {1: np.ones(H, np.float32)}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("api")
    (root / "out").mkdir()
    bundle = make_test_bundle(root / "bundle", hidden_size=H, domains=("a", "b"))
    iv = save_bundle(
        BundleContents(
            model=ModelBinding(hidden_size=H, type="llama", num_layers=4),
            interventions=[InterventionData("honesty", {1: np.ones(H, np.float32)})],
        ),
        root / "iv",
    )
    fifo = root / "fifo"
    os.mkfifo(fifo)
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = root / "key.pem"
    private_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_pem = root / "key.pub"
    public_pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    svec = root / "v.svec"
    svec.write_text(
        '{"model_type": "llama", "directions": {"2": [' + ", ".join(["0.5"] * H) + "]}}"
    )
    return World(root, bundle, iv, fifo, private_pem, public_pem, svec, [0])


def _signed_copy(world: World) -> Path:
    dest = world.fresh()
    save_bundle(read_bundle_contents(world.bundle), dest)
    sign_bundle(dest, load_private_key(world.private_pem))
    return dest


# name -> (function, baseline keyword arguments built for each call, kind of each argument)
Baseline = Callable[[World], dict[str, Any]]
LOADER_KINDS = {
    "path": "path",
    "verify": "bool",
    "expected_digest": "none",
    "trusted_keys": "none",
    "signature_path": "none",
}
CALLS: dict[str, tuple[Callable[..., Any], Baseline, dict[str, str]]] = {
    "load_bundle": (
        load_bundle,
        lambda w: {
            "path": w.bundle,
            "verify": True,
            "expected_digest": None,
            "trusted_keys": None,
            "signature_path": None,
            "fast": True,
            "asa_only": False,
        },
        {**LOADER_KINDS, "fast": "bool", "asa_only": "bool"},
    ),
    "load_interventions": (
        load_interventions,
        lambda w: {
            "path": w.iv_bundle,
            "verify": True,
            "expected_digest": None,
            "trusted_keys": None,
            "signature_path": None,
        },
        LOADER_KINDS,
    ),
    "read_bundle_contents": (
        read_bundle_contents,
        lambda w: {"path": w.bundle, "verify": True},
        {"path": "path", "verify": "bool"},
    ),
    "validate_bundle": (
        validate_bundle,
        lambda w: {"path": w.bundle, "deep": False},
        {"path": "path", "deep": "bool"},
    ),
    "save_bundle": (
        save_bundle,
        lambda w: {
            "contents": make_test_contents(hidden_size=H, domains=("a", "b")),
            "destination": w.fresh(),
            "force": False,
            "check": True,
            "before_commit": None,
        },
        {
            "contents": "never",
            "destination": "destination",
            "force": "bool",
            "check": "bool",
            "before_commit": "none",
        },
    ),
    "root_digest": (root_digest, lambda w: {"manifest_bytes": b"{}"}, {"manifest_bytes": "bytes"}),
    "load_private_key": (
        load_private_key,
        lambda w: {"source": w.private_pem, "password": None},
        {"source": "never", "password": "none"},
    ),
    "load_public_key": (load_public_key, lambda w: {"source": w.public_pem}, {"source": "never"}),
    "sign_bundle": (
        sign_bundle,
        lambda w: {
            "bundle_dir": w.fresh(),
            "private_key": load_private_key(w.private_pem),
            "signature_path": None,
        },
        {"bundle_dir": "path", "private_key": "never", "signature_path": "optional_destination"},
    ),
    "verify_bundle_signature": (
        verify_bundle_signature,
        lambda w: {
            "bundle_dir": _signed_copy(w),
            "trusted_keys": [w.public_pem],
            "signature_path": None,
            "file_digests": None,
        },
        {
            "bundle_dir": "path",
            "trusted_keys": "never",
            "signature_path": "none",
            "file_digests": "none",
        },
    ),
    "detect_kind": (detect_kind, lambda w: {"path": w.svec}, {"path": "path"}),
    "import_source": (
        import_source,
        lambda w: {
            "path": w.svec,
            "binding": None,
            "name": "v",
            "coefficient": 1.0,
            "card": True,
        },
        {
            "path": "path",
            "binding": "none",
            "name": "none",
            "coefficient": "number",
            "card": "card",
        },
    ),
    "import_file": (
        import_file,
        lambda w: {
            "source": w.svec,
            "destination": w.fresh(),
            "binding": ImportBinding(num_layers=4),
            "name": None,
            "coefficient": 2.0,
            "force": False,
        },
        {
            "source": "path",
            "destination": "destination",
            "binding": "none",
            "name": "none",
            "coefficient": "number",
            "force": "bool",
        },
    ),
    "ImportBinding": (
        ImportBinding,
        lambda w: {
            "model_type": "llama",
            "num_layers": 4,
            "hidden_size": H,
            "model_id": "org/m",
            "model_dir": None,
        },
        {
            "model_type": "label",
            "num_layers": "none",
            "hidden_size": "none",
            "model_id": "label",
            "model_dir": "lazy_path",
        },
    ),
    "from_repeng": (
        from_repeng,
        lambda w: {
            "vector": _RepengLike(),
            "binding": None,
            "name": "control",
            "coefficient": 1.0,
            "card": True,
        },
        {
            "vector": "never",
            "binding": "none",
            "name": "never",
            "coefficient": "number",
            "card": "card",
        },
    ),
    "from_steering_vectors": (
        from_steering_vectors,
        lambda w: {
            "vector": _SteeringVectorLike(),
            "binding": None,
            "name": "sv",
            "multiplier": 1.0,
            "card": False,
        },
        {
            "vector": "never",
            "binding": "none",
            "name": "never",
            "multiplier": "number",
            "card": "card",
        },
    ),
    "plan_gguf": (
        plan_gguf,
        lambda w: {
            "bundle": load_bundle(w.iv_bundle),
            "interventions": None,
            "domain": None,
            "sign": None,
            "model_hint": None,
        },
        {
            "bundle": "never",
            "interventions": "none",
            "domain": "none",
            "sign": "none",
            "model_hint": "label",
        },
    ),
    "export_gguf": (
        export_gguf,
        lambda w: {
            "bundle_path": w.iv_bundle,
            "destination": w.fresh(),
            "interventions": None,
            "domain": None,
            "sign": None,
            "model_hint": "llama",
            "strict": False,
            "force": False,
        },
        {
            "bundle_path": "path",
            "destination": "destination",
            "interventions": "none",
            "domain": "none",
            "sign": "none",
            "model_hint": "label",
            "strict": "bool",
            "force": "bool",
        },
    ),
}


def acceptable(kind: str, value: Any) -> bool:
    """Whether a hostile value may be accepted for an argument of this kind (else it is refused).

    ``never``/``path``: no hostile value is a usable object or an existing input; ``none``: only
    None (the argument is optional); ``bool``: a real bool; ``number``: a finite number in the
    schema's range (not a bool); ``destination``: a new relative name (never a device: it is
    not passed to a parameter that writes); ``label``: None or a manifest label;
    ``lazy_path``: any usable path (not read yet); ``card``: a bool or the card's text;
    ``bytes``: bytes; ``mapping``/``optional_mapping``: a dict (or None); ``index``: an int >= 0.
    """
    if kind in ("never", "path"):
        return False
    if kind == "none":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "number":
        return (
            not isinstance(value, bool)
            and isinstance(value, (int, float, np.integer, np.floating))
            and math.isfinite(float(value))
            and abs(float(value)) <= 1e6
        )
    if kind == "destination":
        return value == "name\n"
    if kind == "optional_destination":
        return value is None or value == "name\n"
    if kind == "label":  # optional text of 1..128 characters without control characters
        return value is None or (
            isinstance(value, str)
            and 1 <= len(value) <= 128
            and not any(ord(c) < 32 or ord(c) == 127 for c in value)
        )
    if kind == "lazy_path":
        return value is None or (
            isinstance(value, (str, os.PathLike)) and os.fspath(value) not in ("", "a\x00b")
        )
    if kind == "mapping":
        return isinstance(value, dict)
    if kind == "optional_mapping":
        return value is None or isinstance(value, dict)
    if kind == "index":  # a non-negative int (not bool) of a sane size
        return type(value) is int and 0 <= value < 2**31
    if kind == "card":
        return isinstance(value, (bool, str))
    if kind == "bytes":
        return isinstance(value, bytes)
    raise AssertionError(kind)


def _bounded(fn: Callable[[], Any], seconds: float = 60.0) -> Any:
    """Run ``fn`` in a daemon thread: a call that blocks (on a FIFO) fails the test."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the call blocked"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def test_every_public_function_outside_the_runtime_is_covered() -> None:
    public = {
        name
        for name in asa_format.__all__
        if callable(getattr(asa_format, name))
        and not isinstance(getattr(asa_format, name), type)
        and name not in ("is_error_code", "problems_of", "ErrorCode")  # helpers, a type alias
    }
    assert public <= set(CALLS), sorted(public - set(CALLS))


@pytest.mark.parametrize("name", sorted(CALLS))
def test_baseline_call_succeeds(world: World, name: str) -> None:
    fn, baseline, kinds = CALLS[name]
    assert set(kinds) == set(baseline(world))
    if name == "sign_bundle":
        kwargs = baseline(world)
        save_bundle(read_bundle_contents(world.bundle), kwargs["bundle_dir"])
        _bounded(lambda: fn(**kwargs))
        return
    _bounded(lambda: fn(**baseline(world)))


@pytest.mark.parametrize("name", sorted(CALLS))
def test_hostile_arguments_give_a_coded_error_or_success(
    world: World, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fn, baseline, kinds = CALLS[name]
    cwd = world.fresh()
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a relative destination lands in this test's own folder
    failures: list[str] = []
    for param in baseline(world):
        for value in hostile_values(world):
            if (
                kinds[param].endswith("destination")
                and isinstance(value, Path)
                and value.is_absolute()
            ):
                continue  # a device is never handed to a parameter that writes (the test runs as root)
            kwargs = baseline(world)
            if name == "sign_bundle" and param != "bundle_dir":
                save_bundle(read_bundle_contents(world.bundle), kwargs["bundle_dir"])
            kwargs[param] = value
            try:
                outcome = _bounded(lambda kwargs=kwargs: fn(**kwargs))
            except AsaError as exc:
                assert exc.code in CODES
                continue
            except Exception as exc:
                failures.append(f"{param}={value!r}: {type(exc).__name__}: {exc}"[:300])
                continue
            if getattr(outcome, "ok", True) is False:  # validate_bundle reports, it does not raise
                assert all(p.code in CODES for p in outcome.problems)
                continue
            if not acceptable(kinds[param], value):
                failures.append(
                    f"{param}={value!r}: accepted, but it is not a valid {kinds[param]}"
                )
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode) and stat.S_ISFIFO(os.stat(world.fifo).st_mode)
    assert not failures, f"{name}:\n" + "\n".join(failures)
