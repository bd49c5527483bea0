#!/usr/bin/env bash
# Optional: the llama.cpp parity test (tests/test_llama_cpp.py). llama-cpp-python
# builds llama.cpp from source: about 8 minutes on 2 idle cores, 30 when they are busy.
# Verified with llama-cpp-python 0.3.36, gguf 0.19.0, torch 2.13.0, transformers 5.24.0.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
python3 -m venv .venv-llama
. .venv-llama/bin/activate
CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    pip install torch==2.13.0 -e ".[runtime,interop]" pytest 'llama-cpp-python==0.3.36'
PYTHONPATH="$PWD/tests" python -m pytest -q -p no:cacheprovider tests/test_llama_cpp.py -rs
