#!/usr/bin/env bash
# The repeng interoperability tests (import, export, and asa fit's pca_center against
# ControlVector.train). repeng 0.4 uses np.float_ and needs
# numpy<2, so they run in a separate virtualenv (.venv-repeng), with the same
# torch and transformers as the main one. Call from .ci/run:
#     bash .ci/interop.sh
# Verified with: torch 2.13.0, transformers 5.24.0, numpy 1.26.4, repeng 0.4.0, gguf 0.19.0.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
python3 -m venv .venv-repeng
. .venv-repeng/bin/activate
pip install torch==2.13.0 transformers==5.24.0 'numpy<2' 'repeng==0.4.0' -e ".[interop]" pytest
PYTHONPATH="$PWD/tests" python -m pytest -q -p no:cacheprovider tests/test_interop_runtime.py tests/test_fit_interop.py -k repeng -rs

deactivate

# steering-vectors declares transformers<5, so it is not in the test extra (that would hold the
# main test run below the newest transformers); its check runs in its own virtualenv.
python3 -m venv .venv-sv
. .venv-sv/bin/activate
pip install torch==2.13.0 'steering-vectors>=0.12' -e ".[interop]" pytest
python -c "import transformers; print('steering-vectors checked with transformers', transformers.__version__)"
PYTHONPATH="$PWD/tests" python -m pytest -q -p no:cacheprovider tests/test_interop_runtime.py -k steering_vectors -rs
