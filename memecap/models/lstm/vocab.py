"""Word-level vocabulary of the LSTM baselines: lower-cased words and punctuation marks.

Built from the training captions only; words outside it read as `<unk>`. It is saved with the
export as JSON (no pickles). Evaluation never sees it: generated text is scored against the
original reference strings, not references rebuilt from the vocabulary (the original project's
mistake, which turned every rare word of a reference into a free `<unk>` match).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
WORD = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]", re.UNICODE)
# No space before these when text is put back together (and none after the opening ones).
CLOSING = set(".,!?:;)]}»%…")
OPENING = set("([{«")


def split_words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class WordVocab:
    def __init__(self, words: list[str]):
        if tuple(words[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = range(len(SPECIALS))

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, max_size: Optional[int] = None) -> "WordVocab":
        """Most frequent first (ties alphabetically, so the same captions give the same ids)."""
        counts = Counter(w for t in texts for w in split_words(t))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(list(SPECIALS) + kept[:max_size])

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, self.unk_id) for w in split_words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the end token, special tokens dropped, punctuation attached to its word."""
        out = ""
        for i in ids:
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            word = self.words[i]
            glue = not out or word in CLOSING or out[-1] in OPENING
            out += word if glue else " " + word
        return out

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"words": self.words}, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "WordVocab":
        return cls(json.loads(Path(path).read_text(encoding="utf-8"))["words"])
