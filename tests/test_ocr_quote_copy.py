"""generation.quote=copy: after an opening quote mark the OCR text is forced, then the closing
mark, then decoding is free; per row of the batch, from each row's own ids (beams, sampling), on
tiny ClipCap and tiny RuDOLPH."""
from __future__ import annotations

import pytest
import torch

from memecap.config import ConfigError, GenerationConfig, config_from_dict, load_config
from memecap.metrics.quote_score import normalize_quote, quote_spans, quoted_text
from memecap.data.datasets import CaptionEvalSet
from memecap.quote_copy import QuoteCopyProcessor, quote_mark_tokens, quote_text
from tests.helpers import build_rudolph, no_dropout, ocr_model, prompted, with_texts

TEXTS = ["кек лол", "", "ой всё ну и ну"]


def test_processor_state_comes_from_each_rows_ids():
    """Opener 9 closes with [9]: a copy runs for the quote's tokens and the closing mark, the closing
    mark does not open another quote, the next opener does; rows are items times beams."""
    proc = QuoteCopyProcessor([[5, 6], [7]], openers={9: '"'}, closers={'"': [9]}, start=1)
    assert proc.forced_token(0, [1, 2]) == (None, False)
    assert proc.forced_token(0, [1, 9]) == (5, False)
    assert proc.forced_token(0, [1, 9, 5]) == (6, False)
    assert proc.forced_token(0, [1, 9, 5, 6]) == (9, False)  # the closing mark
    assert proc.forced_token(0, [1, 9, 5, 6, 9]) == (None, True)  # free again: that 9 closed, it did not open
    assert proc.forced_token(0, [1, 9, 5, 6, 9, 3, 9]) == (5, True)  # an opener written anyway is copied too
    assert proc.forced_token(1, [9]) == (7, False)
    # Two items, two beams each: rows 0-1 copy item 0, rows 2-3 item 1, whatever the call count.
    ids = torch.tensor([[0, 9], [0, 2], [0, 9], [0, 9]])
    scores = proc(ids, torch.zeros(4, 12))
    assert scores[0].argmax() == 5 and scores[2].argmax() == 7 and scores[3].argmax() == 7
    assert torch.isinf(scores[0]).sum() == 11 and not torch.isinf(scores[1]).any()
    assert quote_text('он сказал "да" и «нет»') == "он сказал да и нет"


def test_no_second_quote_is_opened_after_the_copy():
    """The OCR text is the meme's whole text: once copied, opening another quote is ruled out (it
    could only repeat the text or invent one), and everything else stays free."""
    proc = QuoteCopyProcessor([[5, 6]], openers={9: '"', 10: "«"}, closers={'"': [9], "»": [11]})
    scores = proc(torch.tensor([[9, 5, 6, 9], [3, 4, 2, 1]]), torch.zeros(2, 12))
    assert torch.isinf(scores[0, [9, 10]]).all() and torch.isfinite(scores[0, :9]).all()
    assert torch.isfinite(scores[1]).all()  # a row that has not quoted yet may open one


def test_a_quote_mark_is_written_freely_only_by_a_token_that_opens_the_copy():
    """A token holding a mark elsewhere (`".`: 12) would open or close a quote the copy never sees:
    banned before the copy and after it; the opener (9) only before."""
    proc = QuoteCopyProcessor([[5, 6]], openers={9: '"'}, closers={'"': [9]}, stray=[12])
    before = proc(torch.tensor([[3, 4]]), torch.zeros(1, 14))
    assert torch.isinf(before[0, 12]) and torch.isfinite(before[0, :12]).all() and torch.isfinite(before[0, 13])
    after = proc(torch.tensor([[9, 5, 6, 9]]), torch.zeros(1, 14))
    assert torch.isinf(after[0, [9, 12]]).all() and torch.isfinite(after[0, 13])
    assert proc(torch.tensor([[3, 9]]), torch.zeros(1, 14))[0].argmax() == 5  # forcing the quote is unaffected
    openers, stray = quote_mark_tokens(6, ['а', ' "', '".', ':"', '»', 'б'].__getitem__)
    assert openers == {1: '"', 3: '"'} and stray == [2, 4]


def test_quote_copy_needs_ocr():
    with pytest.raises(ConfigError, match="generation.quote=copy"):
        load_config("demo", ["data.train=synthetic", "data.val=synthetic", "generation.quote=copy"])
    with pytest.raises(ConfigError, match="generation.quote"):
        load_config("demo", ["generation.quote=always"])
    cfg = load_config("demo", ["data.train=synthetic", "data.val=synthetic", "generation.quote=copy",
                               "model.ocr.enabled=true"])
    assert cfg.generation.quote == "copy"
    # An export's decoding settings are read alone (memecap eval/caption): they must load.
    assert config_from_dict({"generation": {"quote": "copy"}}).generation.quote == "copy"


def steer_gpt2_to(decoder, token: int) -> None:
    """Make the tiny random decoder write `token` wherever it decodes freely: its last layer norm
    outputs a constant along that token's (tied) embedding, so that token has the top logit."""
    with torch.no_grad():
        row = decoder.get_output_embeddings().weight[token]
        decoder.transformer.ln_f.weight.zero_()
        decoder.transformer.ln_f.bias.copy_(20 * row / row.norm() ** 2)


def captions(model, dataset, gen, n):
    return model.generate(model.collate([dataset[i] for i in range(n)]), gen)


def assert_copied(caption: str, text: str) -> None:
    """The caption's first quote is exactly the text, closed."""
    spans = quote_spans(caption)
    assert spans and normalize_quote(spans[0]) == normalize_quote(quote_text(text)), (caption, text)
    assert caption.count('"') >= 2  # the closing mark was written


def test_clipcap_copies_the_ocr_text(tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    model = ocr_model("clipcap_ocr_frozen", tiny_ruclip_dir, tiny_gpt2_dir, tmp_path).eval()
    tok = model.tokenizer
    quote = tok.convert_tokens_to_ids('"')
    assert quote != tok.unk_token_id and quote in model.quote_processor(["x"]).openers
    steer_gpt2_to(model.decoder, quote)
    dataset = CaptionEvalSet(prompted(model, examples, TEXTS))
    free = captions(model, dataset, GenerationConfig(strategy="greedy", max_new_tokens=6), 3)
    assert all(c[0].startswith('""') for c in free)  # left alone it writes quote marks, not the text

    # Exactly the opening mark, the text's tokens and the closing mark fit: one quote, CER 0.
    lengths = [2 + len(tok(quote_text(t), add_special_tokens=False)["input_ids"]) for t in TEXTS]
    for i, text in enumerate(TEXTS):
        gen = GenerationConfig(strategy="greedy", max_new_tokens=lengths[i], quote="copy")
        caption = captions(model, CaptionEvalSet(prompted(model, examples[i:], [text])), gen, 1)[0][0]
        assert caption == f'"{text}"'
        assert quoted_text(caption) == normalize_quote(text)  # the copied quote's CER against the OCR text is 0

    long = GenerationConfig(strategy="greedy", max_new_tokens=24, quote="copy")
    greedy = captions(model, dataset, long, 3)
    for (caption,), text in zip(greedy, TEXTS):
        assert_copied(caption, text)
        # After the closing mark decoding went on, and opened no second quote (steered to, it would).
        assert len(caption) > len(f'"{quote_text(text)}"') and caption.count('"') == 2, caption
    assert greedy == [captions(model, CaptionEvalSet(prompted(model, examples[i:], [t])), long, 1)[0]
                      for i, t in enumerate(TEXTS)]  # batched = one by one
    beam1 = GenerationConfig(strategy="beam", num_beams=1, max_new_tokens=24, quote="copy")
    assert captions(model, dataset, beam1, 3) == greedy  # greedy = a beam of one
    beams = GenerationConfig(strategy="beam", num_beams=3, num_return_sequences=3, max_new_tokens=24, quote="copy")
    sampled = GenerationConfig(strategy="sample", num_return_sequences=2, temperature=1.5, max_new_tokens=24,
                               quote="copy")
    for gen in (beams, sampled):
        for outs, text in zip(captions(model, dataset, gen, 3), TEXTS):
            assert len(outs) == gen.num_return_sequences
            for caption in outs:
                assert_copied(caption, text)


def test_clipcap_without_ocr_cannot_copy(tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    model = ocr_model("clipcap_mlp_frozen", tiny_ruclip_dir, tiny_gpt2_dir, tmp_path).eval()
    feats = model._visual_inputs([examples[0].image_path], cache_dir=None, device="cpu", progress=False, desc="")
    with pytest.raises(ValueError, match="model.ocr.enabled=true"):
        model.generate(model.collate([CaptionEvalSet(feats)[0]]), GenerationConfig(strategy="greedy", quote="copy"))


def steer_rudolph_to(model, token: int) -> None:
    from memecap.models.lora import base_model

    with torch.no_grad():
        base_model(model.rudolph).to_logits[1].bias[token] += 1e4


def test_rudolph_copies_the_ocr_text(tiny_rudolph, examples, tmp_path):
    model = no_dropout(build_rudolph(tiny_rudolph, "rudolph_350m", "model.ocr.enabled=true", work_dir=tmp_path)).eval()
    openers = model.quote_processor(["x"]).openers
    assert openers  # the caption vocabulary has quote marks
    steer_rudolph_to(model, min(openers))
    images = with_texts(model, examples, TEXTS)
    dataset = CaptionEvalSet(images)
    gen = GenerationConfig(strategy="greedy", max_new_tokens=20, quote="copy")
    with torch.no_grad():
        greedy = captions(model, dataset, gen, 3)
        alone = [captions(model, CaptionEvalSet(with_texts(model, examples[i:], [t])), gen, 1)[0]
                 for i, t in enumerate(TEXTS)]
        sampled = captions(model, dataset, GenerationConfig(strategy="sample", num_return_sequences=2, top_k=5,
                                                            max_new_tokens=20, quote="copy"), 3)
        free = captions(model, dataset, GenerationConfig(strategy="greedy", max_new_tokens=20), 3)
    assert greedy == alone  # batched = one by one
    for outs, text in zip(greedy + sampled, TEXTS + TEXTS):
        for caption in outs:
            spans = quote_spans(caption)
            assert spans and normalize_quote(spans[0]) == normalize_quote(text), (caption, text)
    assert all(not normalize_quote(" ".join(quote_spans(c[0]))) for c in free)  # free decoding writes empty quotes
