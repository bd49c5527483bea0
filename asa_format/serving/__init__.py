"""asa bundles in a batching server: the vLLM plugin and what it is built from.

* :mod:`asa_format.serving.registry`: the server's configuration
  (``ASA_VLLM_BUNDLES``, ``ASA_VLLM_TRUSTED_KEYS``), every bundle loaded with
  every check, named by configured name or root digest, and checked against
  the served model as ``attach`` checks it;
* :mod:`asa_format.serving.steer`: the steering semantics of a serving step
  (one adapter over :mod:`asa_format.runtime.flat`): what each request's
  bundle adds at a block of the flattened batch, the prefix-cache salt of a
  steered request, and which engine settings a bundle needs;
* :mod:`asa_format.serving.vllm_plugin`: the ``vllm.general_plugins`` entry
  point (front-end admission, worker hooks).

Nothing here imports vLLM at module level: the package is importable (and
type-checked) without it. See docs/serving.md.
"""

from __future__ import annotations
