"""The "does it look?" checks (memecap/looks.py): which things a description names, the swap of
pictures across memes, and that captioning the swapped items really feeds another meme's picture."""
from __future__ import annotations

import pytest
import torch

from memecap.config import GenerationConfig
from memecap.inference.exported import caption_items
from memecap.looks import SwappedPictures, class_naming, derangement, named_classes, overall_recall, unquoted
from memecap.models import build_model
from memecap.models.prompted import PromptedImages
from tests.helpers import recipe_with_tiny_bases


@pytest.mark.parametrize("text, classes", [
    ("На фото кот сидит за столом", {"cat"}),
    ("Рыжая кошка и котёнок", {"cat"}),
    ("Мужчина, который держит собаку", {"man", "dog"}),
    ("Пёс смотрит на голубя", {"dog", "bird"}),
    ("Девушка с ребёнком", {"woman", "child"}),
    ("Голубой песок, кошмар, который котлован", set()),  # words that start like a class's
    ('Текст: "мой кот и собака". Ниже фото дерева', set()),  # the meme's own words do not count
    ('Кот на фоне. Подпись: «собака»', {"cat"}),
])
def test_named_classes_reads_the_description_outside_its_quotes(text, classes):
    assert named_classes(text) == classes


def test_unquoted_drops_every_quoted_span_even_an_unclosed_one():
    assert unquoted('а "б" в «г "д" е» ж "з') == "а  в  ж "


def test_class_naming_counts_right_and_wrong_namings():
    refs = [["На фото кот"], ["На фото кот и собака"], ["Мужчина в машине"], ["Дерево"]]
    preds = ["Кот лежит", "Собака бежит", "Кот в машине", "Мужчина"]
    rows = {r.name: r for r in class_naming(preds, refs)}
    assert (rows["cat"].memes, rows["cat"].named, rows["cat"].others, rows["cat"].named_wrongly) == (2, 1, 2, 1)
    assert (rows["dog"].memes, rows["dog"].named) == (1, 1)
    assert (rows["man"].memes, rows["man"].named, rows["man"].named_wrongly) == (1, 0, 1)
    assert overall_recall(list(rows.values())) == pytest.approx(2 / 4)


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_moves_every_meme_and_repeats_with_its_seed(n):
    order = derangement(n, seed=7)
    assert sorted(order) == list(range(n)) and all(i != j for i, j in enumerate(order))
    assert derangement(n, seed=7) == order
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, seed=0)


def test_swapped_pictures_keep_each_memes_own_ocr_prompt():
    pictures = [torch.full((2,), float(i)) for i in range(3)]
    items = PromptedImages(pictures, [[10], [11], [12]], ["a", "b", "c"])
    swapped = SwappedPictures(items, [2, 0, 1])
    assert [s["ocr_text"] for s in swapped] == ["a", "b", "c"]
    assert [s["prompt_ids"] for s in swapped] == [[10], [11], [12]]
    assert [int(s["image"][0]) for s in swapped] == [2, 0, 1]
    assert [int(s[0]) for s in SwappedPictures(pictures, [1, 2, 0])] == [1, 2, 0]


def test_captioning_swapped_items_captions_the_other_memes_picture(tiny_ruclip_dir, tiny_gpt2_dir, synthetic_data,
                                                                  tmp_path, one_thread):
    from memecap.data.tables import load_split
    from tests.helpers import nudge_trained_parts

    examples = load_split(synthetic_data["val"], log=None)[0][:6]
    cfg = recipe_with_tiny_bases("clipcap_lora", tiny_ruclip_dir, tiny_gpt2_dir)
    model = build_model(cfg.model, work_dir=tmp_path)
    torch.manual_seed(0)
    nudge_trained_parts(model)
    items = model.image_inputs([e.image_path for e in examples], cache_dir=None, device="cpu", progress=False)
    gen = GenerationConfig(strategy="greedy", max_new_tokens=6)
    own = [c[0] for c in caption_items(model, items, gen, device=torch.device("cpu"), progress=False)]
    assert len(set(own)) > 1  # otherwise a swap could not show
    order = derangement(len(items), seed=1)
    swapped = [c[0] for c in caption_items(model, SwappedPictures(items, order), gen, device=torch.device("cpu"),
                                           progress=False)]
    assert swapped == [own[j] for j in order]
