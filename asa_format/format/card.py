"""The hub model card (``README.md``) that a 1.1 bundle carries.

YAML front matter (``library_name``, ``base_model``, ``tags``) for the hub,
then the binding, the interventions and the files in prose. The card is
listed in the manifest, and the root digest is the SHA-256 of the manifest:
the card therefore cannot state its own bundle's root digest. It states the
SHA-256 of every *other* file instead (vectors, graphs), which the manifest
pins as well, and says where to read the root digest (``asa inspect``).
Deterministic: the same contents give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from asa_format import constants as C
from asa_format.format.interventions import Intervention
from asa_format.format.manifest import ModelBinding

__all__ = ["render_card"]

TAGS = ("asa-format", "activation-steering", "steering-vectors")


def _yaml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def render_card(
    model: ModelBinding,
    entries: Sequence[Intervention],
    asa: Mapping[str, Any],
    files: Mapping[str, bytes],
) -> str:
    kinds = sorted({e.kind for e in entries})
    tags = list(TAGS) + [f"steering-gate-{k}" for k in kinds]
    front = ["---", "library_name: asa-format"]
    if model.id:
        front.append(f"base_model: {_yaml_str(model.id)}")
        front.append("base_model_relation: adapter")
    front.append("tags:")
    front += [f"- {t}" for t in tags]
    front.append("---")
    body = ["", "# asa-format steering bundle", ""]
    body.append(
        "An [asa-format](https://pypi.org/project/asa-format/) bundle: activation-steering vectors "
        "and their gates, every file pinned by SHA-256 in `manifest.json`. Load it with "
        "`asa_format.load_bundle(path)` and apply it with `asa_format.runtime.attach(model, path)`."
    )
    body += ["", "## Model binding", ""]
    body.append(f"- model id: {model.id or 'unknown'}")
    body.append(f"- model type: {model.type or 'unknown'}")
    body.append(f"- hidden size: {model.hidden_size}")
    body.append(
        f"- decoder blocks: {model.num_layers if model.num_layers is not None else 'unknown'}"
    )
    body += ["", "## Interventions", ""]
    for e in entries:
        if e.kind == C.GATE_ASA:
            layer, steering, domains = asa["layer"], asa["steering"], asa["domains"]
            body.append(
                f"- `{e.name}` (gate `asa`): block {layer.index}, alpha {steering.alpha:g}, tau {steering.tau:g}, "
                f"beta {steering.beta:g}, policy `{steering.policy}`; domains: {', '.join(d.name for d in domains)}"
            )
            continue
        line = f"- `{e.name}` (gate `{e.kind}`): blocks {', '.join(map(str, e.blocks))}; coefficient {e.coefficient:g}; policy `{e.policy}`"
        if e.condition is not None:
            g = e.condition
            line += (
                f"; steers a row only when the cosine similarity of its {g.aggregate} prompt hidden state with the "
                f"condition vector is {g.comparator.replace('_', ' ')} {g.threshold:g} at blocks {', '.join(map(str, g.blocks))}"
            )
        body.append(line)
    body += ["", "Blocks are 0-based decoder blocks; a vector is added to the block's output.", ""]
    body += ["## Files", ""]
    body.append(
        "SHA-256 of the files this card describes. The bundle's root digest (SHA-256 of `manifest.json`, "
        "which also pins this card) cannot appear here; read it with `asa inspect` or `asa validate`."
    )
    body.append("")
    for name in sorted(files):
        if name in (C.MANIFEST_FILE, C.CARD_FILE):
            continue
        body.append(f"- `{name}`: sha256 `{hashlib.sha256(files[name]).hexdigest()}`")
    return "\n".join(front + body) + "\n"
