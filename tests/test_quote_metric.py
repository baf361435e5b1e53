"""The quote metric: quoted-text extraction, edit distance, and CER values worked out by hand."""
from __future__ import annotations

import random
from pathlib import Path

import evaluate
import pytest

from memecap import evaluation
from memecap.evaluation import compute_metrics
from memecap.metrics.quote_score import levenshtein, mean_quote_cer, quote_cer, quote_spans, quoted_text

QUOTE_MODULE = Path(evaluation.__file__).parent / "metrics" / "quote.py"


def slow_levenshtein(a: str, b: str) -> int:
    """The textbook dynamic programme, to check the bit-parallel one against."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def test_levenshtein_by_hand_and_against_the_textbook():
    assert levenshtein("кот спит", "кот спал") == 2
    assert levenshtein("", "абв") == 3 and levenshtein("абв", "") == 3 and levenshtein("", "") == 0
    assert levenshtein("никто: я", "никто я") == 1
    assert levenshtein("kitten", "sitting") == 3
    rng = random.Random(0)
    for _ in range(300):
        # Lengths across the 64-bit boundary: the bit vectors are arbitrary-size Python ints.
        a = "".join(rng.choice("аб в") for _ in range(rng.randint(0, 90)))
        b = "".join(rng.choice("аб в") for _ in range(rng.randint(0, 90)))
        assert levenshtein(a, b) == slow_levenshtein(a, b), (a, b)


@pytest.mark.parametrize("caption, spans", [
    ('на фото кот. Подпись: "Кот спит"', ["Кот спит"]),
    ("Надпись: «Ты опять кому-то поверил»", ["Ты опять кому-то поверил"]),
    ('сверху: "никто:" снизу: «я»', ["никто:", "я"]),
    ('ребёнок отвечает: "«дни человечества сочтены»". отец: "что?"', ["«дни человечества сочтены»", "что?"]),
    ('текст: «переименовать "мышь" в "хомяк"»', ['переименовать "мышь" в "хомяк"']),
    ("Твит: “Как только я начал” и „по-русски“", ["Как только я начал", "по-русски"]),
    ('подпись: "забыли закрыть кавычку', ["забыли закрыть кавычку"]),
    ("на фото кот без подписи", []),
])
def test_quote_spans(caption, spans):
    assert quote_spans(caption) == spans


def test_quoted_text_is_normalised():
    assert quoted_text('Подпись: "Ёжик  в\nТУМАНЕ"') == "ежик в тумане"
    assert quoted_text('ребёнок: "«дни сочтены»"') == "дни сочтены"  # inner marks are not text
    assert quoted_text('сверху: "никто:" снизу: «я»') == "никто: я"
    assert quoted_text("без подписи") == ""


def test_quote_cer_by_hand():
    ref = 'на фото кот. Подпись: "Кот спит"'  # quote "кот спит", 8 characters
    assert quote_cer('кот. подпись: «кот спал»', ref) == pytest.approx(2 / 8)  # и->а, т->л
    assert quote_cer("на фото кот", ref) == 1.0  # no quote in the prediction
    assert quote_cer('подпись: ""', ref) == 1.0  # an empty quote: every character missing
    assert quote_cer('подпись: "нет нет нет"', 'подпись: "да"') == 1.0  # 11 edits / 2 characters, capped at 1
    assert quote_cer('подпись: "Ёлка"', 'подпись: "елка"') == 0.0  # case and ё do not count
    assert quote_cer('подпись: "кот"', "на фото кот без подписи") is None  # nothing quoted: not scored


def test_mean_quote_cer_by_hand():
    predictions = [
        'кот. подпись: «кот спал»',          # 2/8 = 0.25
        "на фото кот",                       # no quote: 1.0
        'подпись: "что угодно"',             # reference quotes nothing: left out
        'подпись: "нет нет нет"',            # capped: 1.0
        'подпись: "ой всё"',                 # the closer of two references: 0.0
        'сверху: "никто" снизу: "я"',        # "никто я" vs "никто: я": 1/8 = 0.125
    ]
    references = [
        ['на фото кот. Подпись: "Кот спит"'],
        ['на фото кот. Подпись: "Кот спит"'],
        ["на фото кот без подписи"],
        ['подпись: "да"'],
        ['подпись: "ой всё"', "надпись: «Ой, всё!»"],
        ['сверху: "никто:" снизу: «я»'],
    ]
    expected = (0.25 + 1.0 + 1.0 + 0.0 + 0.125) / 5
    assert mean_quote_cer(predictions, references) == (pytest.approx(expected), 5)
    for scoring in ("memecap", "seed"):
        assert compute_metrics(predictions, references, scoring=scoring)["quote"] == pytest.approx(expected)
    # Plain text (an OCR reading) against the references' quotes.
    assert mean_quote_cer(["КОТ СПИТ"], [['подпись: "кот спит"']], quoted=False) == (0.0, 1)
    # No reference quotes anything: nothing to misquote.
    assert mean_quote_cer(['подпись: "кот"'], [["кот"]]) == (0.0, 0)


def test_quote_loads_offline_as_an_evaluate_module():
    quote = evaluate.load(str(QUOTE_MODULE), keep_in_memory=True)
    got = quote.compute(predictions=['кот. подпись: «кот спал»', "на фото кот"],
                        references=[['Подпись: "Кот спит"'], ['Подпись: "Кот спит"']])
    assert got == {"quote": pytest.approx((0.25 + 1.0) / 2), "counted": 2}
