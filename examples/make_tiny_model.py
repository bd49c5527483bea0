"""Write a tiny random-weight LFM2 model and a word-level tokenizer to a directory.

    python examples/make_tiny_model.py /tmp/tiny-lfm2

The model has the shape the example bundle (examples/asa_assets) is bound to
(model type lfm2, 6 decoder blocks, hidden size 48), so that
``asa run BUNDLE --model /tmp/tiny-lfm2 --prompt ...`` can be tried without
downloading anything. Its weights are random: it steers, but it does not
speak. The tokenizer has a chat template, so ``--system`` and ``--messages``
(tools included) are rendered as they would be for a real chat model.
Needs the runtime extra: pip install "asa-format[runtime]".
"""

from __future__ import annotations

import argparse
from pathlib import Path

HIDDEN_SIZE = 48
NUM_LAYERS = 6
WORDS = (
    "hello world what is the weather in paris call tool search for me please tell a joke "
    "about cats today you are helpful assistant with access to following tools calculator "
    "calendar translate web_search add meeting how much time"
).split()
CHAT_TEMPLATE = (
    "{% if tools %}<tools> {% for tool in tools %}{{ tool['name'] if tool['name'] is defined "
    "else tool['function']['name'] }} {% endfor %}</tools> {% endif %}"
    "{% for message in messages %}<{{ message['role'] }}> {{ message['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def make_tiny_model(directory: Path, *, dtype: str = "float32", seed: int = 1) -> Path:
    """Save the tiny model and tokenizer to ``directory``; returns it."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = [
        "<pad>",
        "<s>",
        "</s>",
        "<unk>",
        "<system>",
        "<user>",
        "<assistant>",
        "<tool>",
        "<tools>",
        "</tools>",
    ]
    vocab = {token: i for i, token in enumerate(specials)}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = transformers.Lfm2Config(
        vocab_size=len(vocab),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=96,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        block_auto_adjust_ff_dim=False,
        layer_types=["conv", "full_attention"] * (NUM_LAYERS // 2),
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype)).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    path = make_tiny_model(args.directory, dtype=args.dtype)
    print(
        f"wrote a tiny lfm2 model (hidden {HIDDEN_SIZE}, {NUM_LAYERS} layers, {args.dtype}) and tokenizer to {path}"
    )


if __name__ == "__main__":
    main()
