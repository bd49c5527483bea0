"""The model side of ``asa fit``: load a local model, bind it, render and encode prompts.

* :func:`load_model` loads a causal LM and its tokenizer from a local
  directory (never from the network) in the requested dtype (default: its
  own), and resolves its decoder blocks with the runtime's resolver.
* :func:`model_binding` is what the bundle is bound to: ``model.id`` (the
  given id, else the Hugging Face id of a hub-cache snapshot, else the
  directory's name), the model type, hidden size and block count.
* :class:`Renderer` turns an instruction into token ids exactly as the
  reference pipeline does: ``[system, user]`` messages through the chat
  template with ``add_generation_prompt=True``, then the tokenizer on that
  text; contrastive pairs are text already and are tokenized as they are.
* :func:`model_files_digest` hashes the model directory's files (the
  provenance and the cache key).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asa_format.errors import FitError, RuntimeCompatError, UsageError
from asa_format.format.jsonio import dumps_canonical
from asa_format.format.manifest import ModelBinding

__all__ = [
    "DTYPES",
    "LoadedModel",
    "Renderer",
    "load_model",
    "model_binding",
    "model_files_digest",
]

DTYPES = ("float32", "float16", "bfloat16")
_HF_SNAPSHOT = re.compile(r"models--([^/\\]+)--([^/\\]+)[/\\]snapshots[/\\][^/\\]+\Z")


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel, eval mode
    tokenizer: Any
    layers: Any  # asa_format.runtime.ResolvedLayers
    dtype: str  # "float32", "float16" or "bfloat16"
    directory: Path
    device: str


def _torch_dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def load_model(
    directory: str | os.PathLike[str],
    dtype: str | None = None,
    *,
    device: str = "cpu",
    layers_path: str | None = None,
) -> LoadedModel:
    """Load the model and tokenizer in ``directory`` (local files only)."""
    import torch
    import transformers

    from asa_format.runtime import resolve_layers

    path = Path(directory).expanduser()
    if not path.is_dir():
        raise RuntimeCompatError(
            f"model directory {str(directory)!r} does not exist or is not a directory",
            code="MODEL_NOT_FOUND",
            hint="pass the directory written by save_pretrained (config.json, weights, tokenizer); "
            "asa fit never downloads models",
        )
    if dtype is not None and dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(DTYPES)}")
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        chosen: Any = "auto" if dtype is None else getattr(torch, dtype)
        auto = transformers.AutoModelForCausalLM
        try:
            model = auto.from_pretrained(str(path), local_files_only=True, dtype=chosen)
        except TypeError as exc:  # transformers < 4.56 names it torch_dtype
            if "dtype" not in str(exc):
                raise
            model = auto.from_pretrained(str(path), local_files_only=True, torch_dtype=chosen)
    except (OSError, ValueError, KeyError) as exc:
        detail = str(exc).strip().split("\n")[0]
        raise RuntimeCompatError(
            f"could not load a causal LM and tokenizer from {str(directory)!r}: {detail}",
            code="MODEL_NOT_FOUND",
            hint="pass a local directory holding a causal LM and its tokenizer",
        ) from exc
    except (RuntimeError, NotImplementedError) as exc:
        raise FitError(
            f"the model cannot be loaded in {dtype or 'its own dtype'}: {str(exc).splitlines()[0]}",
            code="FIT_DTYPE_UNSUPPORTED",
            hint="choose another dtype (float32 runs everywhere)",
        ) from exc
    try:
        model = model.to(device).eval()  # type: ignore[arg-type]
    except (RuntimeError, TypeError, AssertionError) as exc:  # torch without CUDA asserts
        raise UsageError(
            f"cannot move the model to {device!r}: {exc}", hint="use the cpu device"
        ) from exc
    resolved = resolve_layers(model, layers_path)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        layers=resolved,
        dtype=_torch_dtype_name(next(model.parameters()).dtype),
        directory=path,
        device=device,
    )


def default_model_id(directory: Path) -> str:
    """The id a local directory stands for: ``org/name`` for a hub-cache snapshot, else its name."""
    text = str(directory.resolve())
    cached = _HF_SNAPSHOT.search(text)
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    return directory.resolve().name


def model_binding(loaded: LoadedModel, model_id: str | None = None) -> ModelBinding:
    """The binding a fitted bundle records: id, type, hidden size, decoder blocks."""
    from asa_format.runtime import model_hidden_size, model_types

    hidden = model_hidden_size(loaded.model)
    if hidden is None:  # pragma: no cover - every transformers causal LM states it
        raise RuntimeCompatError(
            "the model's hidden size is not known",
            code="MODEL_HIDDEN_SIZE",
            hint="check config.json",
        )
    types = model_types(loaded.model)
    return ModelBinding(
        hidden_size=int(hidden),
        id=model_id if model_id is not None else default_model_id(loaded.directory),
        type=types[-1] if types else None,  # the text model's type for a multimodal wrapper
        num_layers=len(loaded.layers),
    )


def model_files_digest(directory: Path) -> dict[str, str]:
    """SHA-256 of every regular file at the top of the model directory (name -> hex)."""
    out: dict[str, str] = {}
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        if entry.is_symlink():
            target = entry.resolve()
            if not target.is_file():
                continue
        elif not entry.is_file():
            continue
        h = hashlib.sha256()
        with open(entry, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        out[entry.name] = h.hexdigest()
    return out


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Renderer:
    """How a prompt becomes token ids (recorded in the provenance and the cache key)."""

    tokenizer: Any
    mode: str  # "chat": chat template; "raw": the text as it is
    system: str | None = None
    add_special_tokens: bool = False  # after the chat template (the reference notebook: True)

    @classmethod
    def for_instructions(
        cls,
        tokenizer: Any,
        system: str | None,
        *,
        raw: bool = False,
        add_special_tokens: bool = False,
    ) -> Renderer:
        template = getattr(tokenizer, "chat_template", None)
        if system is not None and (raw or not template):
            raise FitError(
                "a system prompt was given but "
                + (
                    "raw rendering (no chat template) was asked for"
                    if raw
                    else "the model's tokenizer has no chat template"
                ),
                code="FIT_NO_CHAT_TEMPLATE",
                hint="drop the system prompt, or use a model directory whose tokenizer has a chat template",
            )
        if raw or not template:
            return cls(tokenizer, "raw", None, True)
        return cls(tokenizer, "chat", system, add_special_tokens)

    @classmethod
    def for_text(cls, tokenizer: Any, system: str | None) -> Renderer:
        """Contrastive pairs: text as it is, the tokenizer's special tokens added (as repeng)."""
        if system is not None:
            raise UsageError(
                "a system prompt applies to instructions; contrastive pairs are whole texts",
                hint="put the system prompt into the pairs' text, or drop it",
            )
        return cls(tokenizer, "raw", None, True)

    def text(self, prompt: str) -> str:
        if self.mode == "raw":
            return prompt
        messages = (
            [{"role": "system", "content": self.system}] if self.system is not None else []
        ) + [{"role": "user", "content": prompt}]
        return str(
            self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        )

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer(self.text(prompt), add_special_tokens=self.add_special_tokens)[
            "input_ids"
        ]
        return [int(i) for i in ids]

    def encode_all(self, prompts: Sequence[str], where: Sequence[str]) -> list[list[int]]:
        out = []
        for prompt, name in zip(prompts, where, strict=True):
            ids = self.encode(prompt)
            if not ids:
                raise FitError(
                    f"row {name!r} encodes to no tokens",
                    code="FIT_EMPTY_PROMPT",
                    hint="give the row text the tokenizer does not drop",
                )
            out.append(ids)
        return out

    def describe(self) -> dict[str, Any]:
        template = getattr(self.tokenizer, "chat_template", None)
        return {
            "mode": self.mode,
            "chat_template_sha256": _sha(template)
            if self.mode == "chat" and isinstance(template, str)
            else None,
            "system_prompt_sha256": _sha(self.system) if self.system is not None else None,
            "add_generation_prompt": self.mode == "chat",
            "add_special_tokens": self.add_special_tokens,
        }

    def key(self) -> str:
        return hashlib.sha256(dumps_canonical(self.describe())).hexdigest()

    def doubles_specials(self, prompt: str) -> int:
        """How many tokens the tokenizer's special tokens would add after the chat template."""
        if self.mode != "chat":
            return 0
        text = self.text(prompt)
        with_specials = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        without = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return len(with_specials) - len(without)
