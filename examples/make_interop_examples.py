"""Write the two steering files the README imports: a llama.cpp control vector and a ``.svec``.

    python examples/make_interop_examples.py examples/

Both steer the example tiny model (examples/make_tiny_model.py: model type
lfm2, 6 decoder blocks, hidden size 48) and are small enough to ship:

* ``control_vector.gguf``: written by the ``gguf`` library (ggml's own
  writer) in the layout repeng's ``ControlVector.export_gguf`` and llama.cpp
  use: ``general.architecture = "controlvector"``,
  ``controlvector.model_hint``, ``controlvector.layer_count`` and one F32
  tensor ``direction.N`` per steered decoder block N (here blocks 2, 3, 4);
* ``steering.svec``: the JSON that IBM activation-steering's
  ``SteeringVector.save`` writes (``model_type``, ``directions`` keyed by
  layer, ``explained_variances``); its ``directions["N"]`` is added to the
  input of block N (here layers 3 and 4, i.e. the outputs of blocks 2 and 3).

The directions are seeded random vectors, not trained ones: the files show
the formats, not a behaviour. Running the script twice writes the same
bytes. Needs numpy and the interop extra (``gguf``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

HIDDEN_SIZE = 48
MODEL_TYPE = "lfm2"
GGUF_BLOCKS = (2, 3, 4)
SVEC_LAYERS = (3, 4)
NORM = 4.0  # as strong as the ASA example (alpha 4 times a unit vector)


def _directions(seed: int, keys: tuple[int, ...]) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for key in keys:
        v = rng.standard_normal(HIDDEN_SIZE)
        out[key] = (NORM * v / np.linalg.norm(v)).astype(np.float32)
    return out


def write_gguf(path: Path) -> Path:
    """A control vector exactly as repeng's ``export_gguf`` writes one."""
    import gguf

    arch = "controlvector"
    directions = _directions(2024, GGUF_BLOCKS)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", MODEL_TYPE)
    writer.add_uint32(f"{arch}.layer_count", len(directions))
    for block, vector in directions.items():
        writer.add_tensor(f"direction.{block}", vector)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_svec(path: Path) -> Path:
    """A ``.svec`` file as activation-steering's ``SteeringVector.save`` writes one."""
    directions = _directions(2025, SVEC_LAYERS)
    data = {
        "model_type": MODEL_TYPE,
        "directions": {str(k): [float(x) for x in v] for k, v in directions.items()},
        "explained_variances": {str(k): round(0.3 - 0.05 * i, 4) for i, k in enumerate(directions)},
    }
    path.write_text(json.dumps(data, indent=4) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    for path in (
        write_gguf(args.directory / "control_vector.gguf"),
        write_svec(args.directory / "steering.svec"),
    ):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
