"""Write the small data sets of examples/fit_data and examples/fit_pairs.jsonl (for ``asa fit``).

    python examples/make_fit_data.py examples/fit_data --pairs examples/fit_pairs.jsonl

Liquid-ASA's layout: ``cal_data.json``, ``train_data.json``,
``valid_data.json`` and ``test_data.json``, each a JSON list of
``{"id", "domain", "label", "instruction"}`` with label 1 when the request
needs a tool. Four domains (search, math, calendar, translate), 8 rows of
each label per domain and split (256 rows), made from templates with a
seeded random generator: the same command writes the same bytes. The
requests are written for the example tiny model (examples/make_tiny_model.py),
whose word-level vocabulary knows most of their words; they are an example
to run, not a benchmark of tool use.

``--pairs FILE`` also writes contrastive pairs as JSON Lines
(``{"id", "positive", "negative", "split"}``, train 24, valid 16, test 16):
the same kind of request with a tool-use wording and a chat wording, for
``asa fit --kind always`` and ``--kind condition``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SPLITS = ("cal", "train", "valid", "test")
PER_LABEL = 8  # rows of each label per domain and split

CITIES = ["paris", "rome", "tokyo", "lima", "oslo", "cairo"]
TOPICS = ["cats", "the weather", "the news", "football", "music"]
PEOPLE = ["anna", "tom", "the team", "my boss", "sara"]
LANGS = ["french", "spanish", "german", "japanese"]
PHRASES = ["hello world", "good morning", "thank you", "where is the station"]
NUMBERS = ["3", "7", "12", "25", "40", "99"]

TEMPLATES: dict[str, dict[int, list[str]]] = {
    "search": {
        1: [
            "search for the weather in {city} today",
            "what is the weather in {city} today",
            "please search for {topic} today",
            "search the web for {topic} in {city}",
        ],
        0: [
            "tell me a joke about {topic}",
            "hello how are you today",
            "write a short poem about {topic}",
            "what do you think about {topic}",
        ],
    },
    "math": {
        1: [
            "how much is {n} times {m}",
            "please add {n} and {m}",
            "call the calculator for {n} times {m}",
            "what is {n} plus {m} please",
        ],
        0: [
            "what is a prime number",
            "tell me a joke about numbers",
            "why is math hard for me",
            "explain what a fraction is",
        ],
    },
    "calendar": {
        1: [
            "add a meeting with {person} today at {n}",
            "please add a meeting for me at {n}",
            "what time is my meeting with {person} today",
            "call the calendar tool for a meeting with {person}",
        ],
        0: [
            "what is a good time for a meeting",
            "tell me a joke about meetings",
            "why are meetings so long",
            "how do you plan a good day",
        ],
    },
    "translate": {
        1: [
            "translate {phrase} to {lang}",
            "please translate {phrase} to {lang}",
            "how do you say {phrase} in {lang}",
            "call the translate tool for {phrase} in {lang}",
        ],
        0: [
            "what language is spoken in {city}",
            "tell me a joke about {lang}",
            "why is {lang} hard to learn",
            "is {lang} a beautiful language",
        ],
    },
}


def make_rows(seed: int = 0) -> dict[str, list[dict[str, object]]]:
    """The four splits, each shuffled with the seeded generator."""
    rng = random.Random(seed)
    splits: dict[str, list[dict[str, object]]] = {s: [] for s in SPLITS}
    for domain, by_label in TEMPLATES.items():
        for label in (1, 0):
            for split in SPLITS:
                for k in range(PER_LABEL):
                    template = rng.choice(by_label[label])
                    text = template.format(
                        city=rng.choice(CITIES),
                        topic=rng.choice(TOPICS),
                        person=rng.choice(PEOPLE),
                        lang=rng.choice(LANGS),
                        phrase=rng.choice(PHRASES),
                        n=rng.choice(NUMBERS),
                        m=rng.choice(NUMBERS),
                    )
                    splits[split].append(
                        {
                            "id": f"{domain}_{split}_{label}_{k}",
                            "domain": domain,
                            "label": label,
                            "instruction": text,
                        }
                    )
    for split in SPLITS:
        rng.shuffle(splits[split])
    return splits


def make_pairs(seed: int = 0) -> list[dict[str, object]]:
    """Contrastive pairs: a request that needs a tool, and small talk on a similar topic."""
    rng = random.Random(seed)
    out: list[dict[str, object]] = []
    domains = list(TEMPLATES)
    for split, n in (("train", 24), ("valid", 16), ("test", 16)):
        for k in range(n):
            domain = domains[k % len(domains)]
            fill = {
                "city": rng.choice(CITIES),
                "topic": rng.choice(TOPICS),
                "person": rng.choice(PEOPLE),
                "lang": rng.choice(LANGS),
                "phrase": rng.choice(PHRASES),
                "n": rng.choice(NUMBERS),
                "m": rng.choice(NUMBERS),
            }
            out.append(
                {
                    "id": f"pair_{split}_{k}",
                    "positive": rng.choice(TEMPLATES[domain][1]).format(**fill),
                    "negative": rng.choice(TEMPLATES[domain][0]).format(**fill),
                    "split": split,
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pairs", type=Path, help="also write contrastive pairs (JSON Lines) here")
    args = parser.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    for split, rows in make_rows(args.seed).items():
        path = args.directory / f"{split}_data.json"
        path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {', '.join(f'{s}_data.json' for s in SPLITS)} to {args.directory}")
    if args.pairs is not None:
        lines = [json.dumps(pair) for pair in make_pairs(args.seed)]
        args.pairs.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {len(lines)} pairs to {args.pairs}")


if __name__ == "__main__":
    main()
