"""Word tokenisers shared by the BLEU and METEOR modules and by `memecap.evaluation`.

This file must not import other memecap files: `evaluate.load` copies it next to a metric
script and imports it there, outside the package.
"""

import re

from nltk.tokenize import NLTKWordTokenizer

_WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")
# Punkt (what nltk.word_tokenize splits sentences with) is a download; a break after
# . ! ? and whitespace is what it does on these captions, abbreviations aside.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TREEBANK = NLTKWordTokenizer()


def tokenize(text: str) -> list[str]:
    """Lower-cased Unicode words, each punctuation mark its own token: `Кот: "да"` -> кот : " да "."""
    return _WORD_OR_MARK.findall(text.lower())


def tokenize_nltk(text: str) -> list[str]:
    """Lower-cased `nltk.word_tokenize` tokens (Treebank rules: `"` becomes `` and ''), offline."""
    return [tok for sent in _SENTENCE_END.split(text.lower().strip()) for tok in _TREEBANK.tokenize(sent)]


def tokenize_whitespace(text: str) -> list[str]:
    """Lower-cased whitespace split, for text that is already tokenised."""
    return text.lower().split()


TOKENIZERS = {"words": tokenize, "nltk": tokenize_nltk, "whitespace": tokenize_whitespace}
