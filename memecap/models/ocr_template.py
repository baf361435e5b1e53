"""The OCR baseline: no training; every caption is `подпись: "<the text read off the meme>"`.

    memecap eval ocr_template --data memes/val.tsv

It knows nothing of the picture and quotes exactly what the OCR read, so it is the floor for
the quote metric and for the words of the quote in BLEU/METEOR: an OCR-conditioned model that
does not beat it has learnt nothing beyond copying. It follows the model protocol (generate,
collate, image_inputs, save/load) so it is scored by the same code as any trained model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

from memecap.config import GenerationConfig, ModelConfig, model_config_from_export, to_dict
from memecap.models.export import read_export_config, write_export_config
from memecap.models.prompted import read_ocr_texts

TEMPLATE = 'подпись: "{text}"'
# Quote marks the OCR read would end the template's quote early (`подпись: "он сказал "да""`);
# they are dropped, which costs nothing in the quote metric (it ignores quote marks).
_QUOTE_MARKS = str.maketrans("", "", '"«»“”„')
NOTHING_TO_TRAIN = ("model.family=ocr_template is a baseline with nothing to train; "
                    "score it with: memecap eval ocr_template --data TABLE")


class OcrTemplate(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    def image_inputs(self, paths: Sequence[Path], *, cache_dir: Optional[str], device, progress: bool,
                     desc: str = "reading text") -> list[str]:
        """The cleaned OCR text of each image (cached under `cache_dir/ocr`)."""
        return read_ocr_texts(paths, self.cfg.ocr, cache_dir=cache_dir, progress=progress, desc=desc)

    def collate(self, items: list[dict]) -> dict:
        if "input_ids" in items[0]:
            raise ValueError(NOTHING_TO_TRAIN)
        batch: dict = {"ocr_text": [it["image"] for it in items]}
        if "index" in items[0]:
            batch["index"] = torch.tensor([it["index"] for it in items])
        return batch

    def encode_caption(self, text: str, max_tokens: int) -> list[int]:
        raise ValueError(NOTHING_TO_TRAIN)

    def forward(self, batch: dict) -> dict:
        raise ValueError(NOTHING_TO_TRAIN)

    loss = forward

    def generate(self, batch: dict, generation: GenerationConfig, synced_gpus: bool = False) -> list[list[str]]:
        """The template around each image's text; decoding settings do not apply."""
        captions = [TEMPLATE.format(text=text.translate(_QUOTE_MARKS)) for text in batch["ocr_text"]]
        return [[caption] * generation.num_return_sequences for caption in captions]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []

    def save_pretrained(self, out_dir: Path, generation: Optional[GenerationConfig] = None,
                        state_dict: Optional[dict] = None) -> None:
        """The config alone: there are no weights."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_export_config(out_dir, {"family": "ocr_template", "model": to_dict(self.cfg), "bases": {},
                                      "generation": to_dict(generation) if generation else None})

    @classmethod
    def from_pretrained(cls, folder: Path, with_encoder: bool = True) -> "OcrTemplate":
        meta = read_export_config(Path(folder))
        return cls(model_config_from_export(meta["model"])).eval()


def build_ocr_template(cfg: ModelConfig, *, work_dir: Path, train_texts: Sequence[str]) -> OcrTemplate:
    return OcrTemplate(cfg)


# The family's entry points (memecap/models/__init__.py).
build = build_ocr_template
load = OcrTemplate.from_pretrained
