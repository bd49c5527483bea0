"""Decision test vectors of the valid conformance cases (``valid/<case>/decisions.json``).

For each valid bundle this module picks hidden-state rows and computes, with
an independent reference of the decision function (spec section 4, written
here with the standard library and numpy elementwise float32 operations, not
with an inference runtime), the routed domain, the probe probability, the
gate and the mixed steering vector. The rows are:

* ``random``: rows spread around the scaler's mean;
* ``router_tie``: the scaler's mean itself, where every router score is
  equal (the graphs' router bias is zero): the lowest domain index wins;
* ``near_router_tie``: two rows on either side of the boundary between two
  domains, whose top two router probabilities differ by less than 1e-6;
* ``near_tau`` / ``near_one_minus_tau``: rows of a domain with a probe whose
  probability is within 1e-6 of ``tau`` (or ``1 - tau``), one above and one
  below, never closer than 1e-8, so a conforming reader (probabilities
  within ``PROBABILITY_TOLERANCE``) gets the same gate.

Sums use :func:`math.fsum` (correctly rounded), so the files do not depend on
the BLAS or the inference runtime of the machine that writes them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from asa_format import constants as C

__all__ = [
    "DECISIONS_FILE",
    "MARGIN_MAX",
    "MARGIN_MIN",
    "PROBABILITY_TOLERANCE",
    "VECTOR_TOLERANCE",
    "decision_vectors",
]

DECISIONS_FILE = "decisions.json"
PROBABILITY_TOLERANCE = 1e-9  # |p - expected| a conforming reader stays within
VECTOR_TOLERANCE = 1e-6  # per element of the mixed vector (spec 4.6)
MARGIN_MIN = 1e-8  # closest a near-threshold row comes to the threshold
MARGIN_MAX = 1e-6  # farthest it may be
N_RANDOM = 6


class Reference:
    """The spec's decision function over the linear graphs of ``asa_format.testing``."""

    def __init__(self, manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> None:
        init = _initializers(files[C.SCALER_FILE])
        self.mean = init["mean"].astype(np.float32)
        self.scale = init["scale"].astype(np.float32)
        router = _initializers(files[C.ROUTER_FILE])
        self.router_w = router["W"].astype(np.float64)
        self.router_b = router["b"].astype(np.float64)
        self.domains = [d["name"] for d in manifest["domains"]]
        self.probes: dict[int, tuple[np.ndarray, float]] = {}
        for i, d in enumerate(manifest["domains"]):
            if d["probe"] is not None:
                probe = _initializers(files[d["probe"]])
                self.probes[i] = (probe["w"].astype(np.float64).reshape(-1), float(probe["b"][0]))
        steering = manifest["steering"]
        self.tau = float(steering["tau"])
        self.beta = float(steering["beta"])
        self.no_probe = float(steering["no_probe_probability"])
        self.vectors = _vectors(files[C.VECTORS_FILE])

    @property
    def hidden_size(self) -> int:
        return int(self.mean.shape[0])

    def scaled(self, h: np.ndarray) -> np.ndarray:
        return (h.astype(np.float32) - self.mean) / self.scale  # float32, elementwise (4.2)

    def router(self, h: np.ndarray) -> list[float]:
        x = [float(v) for v in self.scaled(h)]
        scores = [
            math.fsum([*(x[i] * float(self.router_w[i, j]) for i in range(len(x))), float(b)])
            for j, b in enumerate(self.router_b)
        ]
        top = max(scores)
        e = [math.exp(s - top) for s in scores]
        total = math.fsum(e)
        return [v / total for v in e]

    def decide(self, h: np.ndarray) -> tuple[int, float, int]:
        probs = self.router(h)
        d = probs.index(max(probs))  # first index among the maximal values (4.3)
        p = self.probability(h, d)
        return d, p, gate(p, self.tau)

    def probability(self, h: np.ndarray, d: int) -> float:
        if d not in self.probes:
            return self.no_probe
        w, b = self.probes[d]
        x = [float(v) for v in self.scaled(h)]
        s = math.fsum([*(x[i] * float(w[i]) for i in range(len(x))), b])
        if -s > 700.0:
            return 0.0
        return 1.0 / (1.0 + math.exp(-s))

    def mixed(self, d: int) -> np.ndarray:
        """Section 4.6, steps 1 to 4, in float32 (the norm's sum correctly rounded)."""
        a = np.float32(1.0 - self.beta)
        b = np.float32(self.beta)
        u = a * self.vectors[self.domains[d]] + b * self.vectors[C.GLOBAL_VECTOR]
        n = np.float32(math.sqrt(math.fsum(float(v) ** 2 for v in u.astype(np.float64))))
        return (u / (n + np.float32(C.NORM_EPS))).astype(np.float32)


def gate(p: float, tau: float) -> int:
    """Section 4.5."""
    return 1 if p >= tau else (-1 if p <= 1.0 - tau else 0)


def _initializers(data: bytes) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.ParseFromString(data)
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _vectors(data: bytes) -> dict[str, np.ndarray]:
    import json
    import struct

    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    body = data[8 + n :]
    return {
        k: np.frombuffer(body[v["data_offsets"][0] : v["data_offsets"][1]], "<f4").copy()
        for k, v in header.items()
    }


def _bisect(
    f: Callable[[float], float], lo: float, hi: float, accept: Callable[[float], bool]
) -> float | None:
    """A ``t`` in ``[lo, hi]`` with ``accept(f(t))``, ``f`` increasing; None if not found."""
    for _ in range(200):
        mid = (lo + hi) / 2.0
        value = f(mid)
        if accept(value):
            return mid
        if value < 0.0:
            lo = mid
        else:
            hi = mid
    return None


def _threshold_row(
    ref: Reference, rng: np.random.Generator, d: int, target: float, sign: float
) -> np.ndarray | None:
    """A row routed to ``d`` whose probability is ``target`` + ``sign`` x (1e-8 .. 1e-6)."""
    aim = target + sign * 1e-7
    w = ref.probes[d][0]
    direction = w / ref.scale.astype(np.float64)  # the probe score grows along it
    direction /= np.linalg.norm(direction)
    for _ in range(400):
        h0 = ref.mean + ref.scale * rng.standard_normal(ref.hidden_size).astype(np.float32)
        if ref.decide(h0)[0] != d:
            continue
        start = h0.astype(np.float64)

        def point(t: float, start: np.ndarray = start) -> np.ndarray:
            return (start + t * direction).astype(np.float32)

        def excess(t: float, point: Callable[[float], np.ndarray] = point) -> float:
            return ref.probability(point(t), d) - aim

        if not excess(-64.0) < 0.0 < excess(64.0):
            continue
        t = _bisect(
            excess, -64.0, 64.0, lambda e: MARGIN_MIN <= sign * (e + aim - target) <= MARGIN_MAX
        )
        if t is not None and ref.decide(point(t))[0] == d:
            return point(t)
    return None


def _near_threshold(
    ref: Reference, rng: np.random.Generator, target: float
) -> list[tuple[str, np.ndarray]]:
    """Rows whose probability lies just above and just below ``target``."""
    rows: list[tuple[str, np.ndarray]] = []
    for d in sorted(ref.probes):
        for side, sign in (("above", 1.0), ("below", -1.0)):
            h = _threshold_row(ref, rng, d, target, sign)
            if h is not None:
                rows.append((f"{side} {target!r} in domain {ref.domains[d]!r}", h))
    return rows


def _near_router_tie(ref: Reference, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Two rows on either side of a router decision boundary, top-two gap below 1e-6."""
    starts: dict[int, np.ndarray] = {}
    for _ in range(400):
        h = ref.mean + ref.scale * rng.standard_normal(ref.hidden_size).astype(np.float32)
        starts.setdefault(ref.decide(h)[0], h)
        if len(starts) >= 2:
            break
    if len(starts) < 2:
        return []
    (i, a), (_, b) = sorted(starts.items())[:2]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)

    def point(t: float) -> np.ndarray:
        return (a64 + t * (b64 - a64)).astype(np.float32)

    def gap(h: np.ndarray) -> float:
        probs = sorted(ref.router(h), reverse=True)
        return probs[0] - probs[1]

    lo, hi = 0.0, 1.0
    for _ in range(200):
        left, right = point(lo), point(hi)
        if gap(left) <= MARGIN_MAX and gap(right) <= MARGIN_MAX:
            break
        mid = (lo + hi) / 2.0
        if ref.decide(point(mid))[0] == i:
            lo = mid
        else:
            hi = mid
    left, right = point(lo), point(hi)
    if not all(MARGIN_MIN <= gap(h) <= MARGIN_MAX for h in (left, right)):
        return []
    if ref.decide(left)[0] == ref.decide(right)[0]:
        return []
    return [("near a router tie, first side", left), ("near a router tie, second side", right)]


def decision_vectors(
    name: str, manifest: Mapping[str, Any], files: Mapping[str, bytes]
) -> dict[str, Any]:
    """The ``decisions.json`` document of valid case ``name``."""
    ref = Reference(manifest, files)
    rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
    rows: list[tuple[str, str, np.ndarray]] = []
    for k in range(N_RANDOM):
        h = ref.mean + ref.scale * (1.5 * rng.standard_normal(ref.hidden_size)).astype(np.float32)
        rows.append(("random", f"random row {k}", h.astype(np.float32)))
    tie = ref.mean.copy()
    probs = ref.router(tie)
    if len(set(probs)) == 1:
        rows.append(("router_tie", "every router score equal: the lowest index wins", tie))
    rows += [("near_router_tie", why, h) for why, h in _near_router_tie(ref, rng)]
    targets = [("near_tau", ref.tau), ("near_one_minus_tau", 1.0 - ref.tau)]
    for kind, target in targets:
        if ref.tau != 0.5 or kind == "near_tau":
            if MARGIN_MAX * 10 < target < 1.0 - MARGIN_MAX * 10:
                rows += [(kind, why, h) for why, h in _near_threshold(ref, rng, target)]
    out_rows = []
    for kind, why, h in rows:
        d, p, g = ref.decide(h)
        out_rows.append(
            {
                "kind": kind,
                "description": why,
                "hidden": [float(v) for v in h.astype(np.float32)],
                "domain": ref.domains[d],
                "domain_index": d,
                "probability": p,
                "gate": g,
                "vector": [float(v) for v in ref.mixed(d)],
            }
        )
    return {
        "description": (
            "hidden rows (float32 values) and what the decision function of section 4 gives "
            "for each: routed domain, probe probability, gate and the mixed steering vector "
            "of the routed domain"
        ),
        "tolerance": {"probability": PROBABILITY_TOLERANCE, "vector": VECTOR_TOLERANCE},
        "rows": out_rows,
    }


CONDITIONS_FILE = "conditions.json"
SIMILARITY_TOLERANCE = 1e-12  # |s - expected| a conforming reader stays within
THRESHOLD_MARGIN = 1e-7  # how close the near-threshold rows come to the threshold


def _cos(h: list[float], c: list[float]) -> float:
    """The spec 14.4 similarity with correctly rounded sums (0 when h is zero)."""
    nh = math.sqrt(math.fsum(x * x for x in h))
    nc = math.sqrt(math.fsum(x * x for x in c))
    if nh == 0.0 or nc == 0.0:
        return 0.0
    return math.fsum(x * y for x, y in zip(h, c, strict=True)) / (nh * nc)


def _holds(s: float, comparator: str, threshold: float) -> bool:
    if not math.isfinite(s):
        return False
    return s > threshold if comparator == "greater_than" else s < threshold


def _at_similarity(c: np.ndarray, other: np.ndarray, target: float) -> list[float]:
    """A row whose cosine with ``c`` is ``target``: ``t c/|c| + sqrt(1-t^2) o`` (o orthogonal)."""
    cu = c / np.linalg.norm(c)
    o = other - np.dot(other, cu) * cu
    o = o / np.linalg.norm(o)
    row = target * cu + math.sqrt(max(0.0, 1.0 - target * target)) * o
    return [float(x) for x in (row * 3.0)]


def condition_vectors(
    case: str, manifest: Mapping[str, Any], conditions: Mapping[str, Mapping[int, np.ndarray]]
) -> dict[str, Any] | None:
    """Per condition intervention of a valid case: rows of aggregated hidden states (one per
    condition block) with the expected similarities and outcome (spec 14.4)."""
    out: dict[str, Any] = {}
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    for entry in manifest.get("interventions", []):
        gate = entry["gate"]
        if gate["kind"] != "condition":
            continue
        blocks = [int(b) for b in gate["blocks"]]
        vecs = {b: np.asarray(conditions[entry["name"]][b], dtype=np.float64) for b in blocks}
        hidden = len(next(iter(vecs.values())))
        rows: list[dict[str, Any]] = []

        def add(
            kind: str,
            description: str,
            per_block: dict[int, list[float]],
            vecs: dict[int, np.ndarray] = vecs,
            blocks: list[int] = blocks,
            rows: list[dict[str, Any]] = rows,
            gate: Mapping[str, Any] = gate,
        ) -> None:
            sims = [_cos(per_block[b], [float(x) for x in vecs[b]]) for b in blocks]
            rows.append(
                {
                    "kind": kind,
                    "description": description,
                    "hidden": [per_block[b] for b in blocks],
                    "similarities": sims,
                    "fires": all(_holds(s, gate["comparator"], gate["threshold"]) for s in sims),
                }
            )

        for i in range(N_RANDOM):
            add(
                "random",
                f"random row {i}",
                {b: [round(float(x), 4) for x in rng.standard_normal(hidden)] for b in blocks},
            )
        add(
            "aligned",
            "each hidden state equals its condition vector: s = 1",
            {b: [float(x) for x in vecs[b]] for b in blocks},
        )
        add(
            "opposite",
            "each hidden state is minus its condition vector: s = -1",
            {b: [float(-x) for x in vecs[b]] for b in blocks},
        )
        add("zero", "zero hidden states: s = 0", {b: [0.0] * hidden for b in blocks})
        t = float(gate["threshold"])
        for side, sign in (("above", 1.0), ("below", -1.0)):
            target = min(1.0, max(-1.0, t + sign * THRESHOLD_MARGIN))
            per = {b: _at_similarity(vecs[b], rng.standard_normal(hidden), target) for b in blocks}
            add(f"near_threshold_{side}", f"s = threshold {'+' if sign > 0 else '-'} 1e-7", per)
        out[entry["name"]] = {
            "blocks": blocks,
            "comparator": gate["comparator"],
            "threshold": gate["threshold"],
            "aggregate": gate["aggregate"],
            "rows": rows,
        }
    if not out:
        return None
    return {
        "description": "condition decisions of this case's condition interventions (SPEC 14.4): "
        "each row gives the aggregated hidden state at every condition block",
        "tolerance": {"similarity": SIMILARITY_TOLERANCE},
        "interventions": out,
    }
