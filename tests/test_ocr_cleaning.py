"""What the OCR's cleaning drops (each rule on hand-made lines) and the script repair of
look-alike letters (hand-made cases)."""
from __future__ import annotations

import pytest

from memecap.config import OCR_CLEANING_RULES, ConfigError, OcrConfig
from memecap.ocr import Word, clean_text
from memecap.ocr.cleaning import RULES, drop_chrome, drop_handles, drop_timestamps, drop_watermarks
from memecap.ocr.script import line_script, repair_line, repair_words


def lines(*texts: str) -> list[Word]:
    return [Word(word, 90.0, i) for i, text in enumerate(texts) for word in text.split()]


def test_the_config_names_every_rule():
    assert tuple(RULES) == OCR_CLEANING_RULES == tuple(OcrConfig().cleaning)
    with pytest.raises(ConfigError, match="model.ocr.cleaning: unknown rule.*usernames"):
        OcrConfig(cleaning=["handles", "usernames"])


def test_handles():
    assert drop_handles("Госпожа Раздражабонька @linkharker").split() == ["Госпожа", "Раздражабонька"]
    assert drop_handles("пиши на почту a@b.ru") == "пиши на почту a@b.ru"  # an address is not a handle
    # A display name left alone on its line beside the handle goes with it.
    assert clean_text(lines("ката @Kata_le", "пацаны би лайк"), 0) == "пацаны би лайк"


def test_timestamps():
    assert drop_timestamps("Блять я тупой 2 ноя в 19:19").split() == ["Блять", "я", "тупой"]
    assert drop_timestamps("01 7 февр. 2018 г. конец").split() == ["01", "конец"]
    assert drop_timestamps("вчера в 12:30 ответ").split() == ["ответ"]
    assert drop_timestamps("5 мин назад 12.03.2021 всё").split() == ["всё"]
    assert drop_timestamps("Москва 15 апреля 2020").split() == ["Москва"]
    assert drop_timestamps("до 100 лет") == "до 100 лет"  # numbers that are not dates stay


def test_chrome():
    assert drop_chrome("Полина ответила Чтобы он попил").split() == ["Полина", "Чтобы", "он", "попил"]
    assert drop_chrome("Ответить").strip() == ""
    assert drop_chrome("Показать полностью...").strip(" .") == ""
    assert drop_chrome("ОТМЕТКИ «НРАВИТСЯ» 5").split() == ["5"]
    assert drop_chrome("я читаю книгу") == "я читаю книгу"  # whole words only: `читаю` is not `Читать`
    assert clean_text(lines("Ерлан ответил", "Блять я тупой зачем его в воду", "2 ноя в 19:19 Ответить"), 0) == \
        "Блять я тупой зачем его в воду"


def test_watermarks():
    assert drop_watermarks("vk.com/textmeme мем").split() == ["мем"]
    assert drop_watermarks("смотри на 9gag.com и www.example.org/x").split() == ["смотри", "на", "и"]
    assert drop_watermarks("сайт.рф").strip() == ""
    assert drop_watermarks("ну и т.д. всё") == "ну и т.д. всё"


def test_rules_apply_only_when_named():
    words = lines("@user", "Когда пятница", "vk.com/memes 19:21 Ответить")
    assert clean_text(words, 0) == "Когда пятница"
    assert clean_text(words, 0, ()) == "@user Когда пятница vk.com/memes 19:21 Ответить"
    assert clean_text(words, 0, ("handles", "chrome")) == "Когда пятница vk.com/memes 19:21"


@pytest.mark.parametrize("raw, fixed", [
    ("HE ПЛАЧЬ", "НЕ ПЛАЧЬ"),  # all look-alikes: the line's script
    ("пpивет мир", "привет мир"),  # a Latin p inside a Russian word
    ("ТЫ ОПЯТЬ ПОВEРИЛ", "ТЫ ОПЯТЬ ПОВЕРИЛ"),
    ("ВОТ TAK", "ВОТ ТАК"),
    ("Hello wоrld", "Hello world"),  # a Cyrillic о inside an English word
    ("COOL STORY BRO", "COOL STORY BRO"),  # an English line stays English
    ("iPhone и Android", "iPhone и Android"),  # words with letters that have no twin stay as they are
    ("OK", "OK"),
    ("купил WinRAR", "купил WinRAR"),
])
def test_script_repair(raw, fixed):
    assert repair_line(raw) == fixed


def test_script_of_a_line():
    assert line_script("ТЫ ОПЯТЬ") == "cyr" and line_script("WHEN GRANDMA") == "lat"
    assert line_script("HE OK") == "lat"  # only look-alikes: the letters as written
    assert repair_words(["HE", "ПЛАЧЬ,", "TAK!"]) == ["НЕ", "ПЛАЧЬ,", "ТАК!"]  # punctuation stays
