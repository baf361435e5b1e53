"""Does a captioner look at the picture? Two checks that a model which learnt only the template
(and the quote it copies from the OCR text) fails:

- what it names: on memes whose reference names a thing an image encoder can see (a cat, a dog,
  a man, ...), the share of captions naming the same thing, outside the quoted meme text;
- the same captions with each meme's picture swapped for another meme's (its OCR text kept):
  a model that looks names the other picture's things, and scores lower.

    python scripts/bench_looks.py runs/x --data memes/val.tsv
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Sequence

from memecap.metrics.quote_score import QUOTE_PAIRS

# Word forms as the descriptions write them (any case), strict where a stem is also another word's
# start: "кот" (not "который"), "голубь" (not "голубой"), "пёс" (not "песок").
VISUAL_CLASSES: dict[str, str] = {
    "cat": r"кот(а|у|ом|е|ы|ов|ам|ами|ах)?\b|(котик|кот[её]н|котейк|котяр|кошк|кошеч|кошак|кошач)\w*|котэ\b",
    "dog": r"(собак|собач|щен)\w*|п[её]с(ик\w*)?\b|пс(а|у|ом|ы|ов)\b",
    "bird": (r"(птиц|птич|попуга|воробь|уточк)\w*|голуб(ь|я|и|ей|ю|ем|ок|ка|ки)\b"
             r"|ворон(а|ы|у|ой|е)?\b|утк(а|и|у|ой|е)\b"),
    "man": r"(мужчин|мужик)\w*|парень\b|парн(я|ю|ем|и|ей|ям|ями|ях)\b",
    "woman": r"(женщин|девушк|девочк)\w*",
    "child": r"(ребён|ребен|мальчик|малыш)\w*|дет(и|ей|ям|ьми|ях)\b",
}
_PATTERNS = {name: re.compile(rf"\b(?:{stem})", re.IGNORECASE) for name, stem in VISUAL_CLASSES.items()}


def unquoted(text: str) -> str:
    """`text` without its quoted spans (the meme's own words, which name whatever they like)."""
    out, closers = [], []
    for ch in text:
        if closers and ch == closers[-1]:
            closers.pop()
        elif ch in QUOTE_PAIRS:
            closers.append(QUOTE_PAIRS[ch])
        elif not closers:
            out.append(ch)
    return "".join(out)


def named_classes(text: str) -> set[str]:
    """The visual classes a description names outside its quotes."""
    bare = unquoted(text).replace("Ё", "Е").replace("ё", "е")
    return {name for name, pattern in _PATTERNS.items() if pattern.search(bare)}


@dataclass
class ClassNaming:
    name: str
    memes: int  # memes whose references name the class
    named: int  # of those, captions naming it
    others: int  # memes whose references do not name it
    named_wrongly: int  # of those, captions naming it

    @property
    def recall(self) -> float:
        return self.named / self.memes if self.memes else 0.0

    @property
    def false_rate(self) -> float:
        return self.named_wrongly / self.others if self.others else 0.0


def class_naming(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[ClassNaming]:
    """Per visual class: how often a caption names it when a reference does, and when none does."""
    said = [named_classes(p) for p in predictions]
    meant = [set().union(*(named_classes(r) for r in refs)) for refs in references]
    rows = []
    for name in VISUAL_CLASSES:
        has = [name in m for m in meant]
        rows.append(ClassNaming(name, memes=sum(has), named=sum(h and name in s for h, s in zip(has, said)),
                                others=sum(not h for h in has),
                                named_wrongly=sum(not h and name in s for h, s in zip(has, said))))
    return rows


def overall_recall(rows: Sequence[ClassNaming]) -> float:
    """Share of (meme, class) pairs named right, over all classes the references name."""
    memes = sum(r.memes for r in rows)
    return sum(r.named for r in rows) / memes if memes else 0.0


def derangement(n: int, seed: int) -> list[int]:
    """A permutation that moves every index (n >= 2): each meme gets another meme's picture."""
    if n < 2:
        raise ValueError(f"swapping pictures needs at least 2 images, got {n}")
    rng = random.Random(seed)
    order = list(range(n))
    while any(i == j for i, j in enumerate(order)):
        rng.shuffle(order)
    return order


class SwappedPictures:
    """What a model reads per image (from its `image_inputs`), with the picture of item `order[i]`
    in item i. An item that carries more than the picture (a dict with "image", e.g. the OCR
    prompt) keeps the rest of its own."""

    def __init__(self, items, order: Sequence[int]):
        if len(order) != len(items):
            raise ValueError(f"order has {len(order)} entries for {len(items)} items")
        self.items, self.order = items, list(order)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        own, other = self.items[i], self.items[self.order[i]]
        if isinstance(own, dict) and "image" in own:
            return {**own, "image": other["image"]}
        return other
