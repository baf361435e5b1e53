"""A vision-language model (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM, ...) as a memecap captioner.

Each training sequence is one chat turn and its answer:
    [prompt: template, image tokens, instruction (+ the OCR text)] [description tokens] [end of turn]
Only the description and the end-of-turn token are scored; the prompt (its image tokens included)
and the padding are -100. The prompt is never cut: `data.max_caption_tokens` bounds the
description alone, and `data.long_captions` says whether a longer one is cut or refused.
Generation left-pads the prompts, so a batch decodes as its images would one by one.
"""
from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn
from transformers import LogitsProcessorList

from memecap.config import GenerationConfig, ModelConfig, model_config_from_export, to_dict
from memecap.data.images import read_image
from memecap.generation import hf_generate_kwargs
from memecap.models.family_parts import (QuoteCopying, caption_loss, ended_caption, parameters_that_train, per_image,
                                         scored_tail, takes_logits_to_keep, without_unscored)
from memecap.models.export import base_entry, read_export_config, write_export_config
from memecap.models.prompted import read_ocr_texts, require_ocr_text
from memecap.models.vlm.chat import (IDEFICS_TYPES, KNOWN_TYPES, ChatFormat, chat_format, image_placeholder,
                                     image_token_texts, mm_token_types)
from memecap.models.vlm.template import ChatTemplate
from memecap.quiet import quiet_weights
from memecap.models.lora import ADAPTER_ONLY, base_model, load_adapter

ADAPTER_DIR = "adapter"  # mode=lora: the PEFT adapter (safetensors)
MODEL_DIR = "model"  # mode=full: every weight (safetensors) and the model's config
PROCESSOR_DIR = "processor"  # tokenizer, image processor settings (the image budget) and chat template
TEMPLATE_FILE = "chat_template.jinja"


class VlmImages:
    """Per image, where it is read from (and with OCR its text). Its pixels and prompt ids are made
    per batch, in `Vlm.collate` (`Vlm.prepare_batch`), so nothing is made or held before it is used."""

    def __init__(self, sources: Sequence, texts: Optional[list[str]] = None):
        self.sources, self.texts = list(sources), texts

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict:
        return {"source": self.sources[i], "ocr_text": None if self.texts is None else self.texts[i]}


def joined(images: list[dict]) -> dict:
    """Images prepared one by one (`Vlm.prepare`) as `Vlm.prepare_batch` makes them together."""
    return {"vision": {k: torch.cat([im["vision"][k] for im in images]) for k in images[0]["vision"]},
            "prompt_ids": [im["prompt_ids"] for im in images],
            "per_token": {k: [im["per_token"][k] for im in images] for k in images[0]["per_token"]}}


class Vlm(nn.Module):
    def __init__(self, cfg: ModelConfig, model: nn.Module, tokenizer, image_processor, template: Optional[ChatTemplate],
                 processor=None):
        super().__init__()
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.template = template
        self.processor = processor  # architectures memecap has no expansion for: their AutoProcessor
        base = base_model(model)
        self.model_type = base.config.model_type
        if self.model_type not in KNOWN_TYPES and processor is None:
            raise ValueError(f"model type {self.model_type!r}: memecap expands the image tokens of "
                             f"{', '.join(KNOWN_TYPES)} itself; other models need their AutoProcessor")
        self.image_token_id = base.config.image_token_id
        placeholder = (processor.image_token if processor is not None and getattr(processor, "image_token", None)
                       else image_placeholder(self.model_type, tokenizer, base.config))
        self.chat: ChatFormat = chat_format(tokenizer, template, placeholder)
        self.eos_id = self.chat.end_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._needs_mm_types = "mm_token_type_ids" in inspect.signature(type(base).forward).parameters
        self._keeps_logits = takes_logits_to_keep(model)
        self._quotes = QuoteCopying()

    @property
    def config(self):
        """The language model's config: DeepSpeed's "auto" bucket sizes come from its hidden size."""
        return base_model(self.model).config.get_text_config()

    # -- data -------------------------------------------------------------------------------
    def encode_caption(self, text: str, max_tokens: int, truncate: bool = True) -> list[int]:
        """The description's token ids and the end-of-turn token, at most `max_tokens` (the prompt
        and its image tokens are not counted: they are never cut)."""
        return ended_caption(self.chat.answer_ids(self.tokenizer, text), self.eos_id, max_tokens, truncate)

    def instruction(self, ocr_text: Optional[str]) -> str:
        """The user turn's text: the recipe's instruction, and a line with the OCR text (cut to
        `model.ocr.max_tokens` tokens) when there is one."""
        v = self.cfg.vlm
        if not ocr_text or not ocr_text.strip():  # no OCR, or no text found on this meme
            return v.instruction
        ids = self.tokenizer(ocr_text, add_special_tokens=False)["input_ids"][: self.cfg.ocr.max_tokens]
        return v.instruction + "\n" + v.ocr_instruction.replace("{text}", self.tokenizer.decode(ids).strip())

    def prepare(self, source, ocr_text: Optional[str] = None) -> dict:
        """One image (path or PIL image) -> its pixel tensors and prompt ids (and, from a processor,
        any other per-token inputs it makes, such as token type ids)."""
        batch = self.prepare_batch([source], [ocr_text])
        return {"vision": batch["vision"], "prompt_ids": batch["prompt_ids"][0], "ocr_text": ocr_text,
                "per_token": {k: v[0] for k, v in batch["per_token"].items()}}

    def prepare_batch(self, sources: Sequence, ocr_texts: Sequence[Optional[str]]) -> dict:
        """Images (paths or PIL images) -> their pixel tensors as one batch, and per image its prompt
        ids (and per-token inputs from a processor): the template rendered once per instruction,
        one tokenizer call. Pixels are made image by image: an image processor given the whole
        batch holds every decoded image and a full-size array copy of each at once (+170 MiB at 32
        memes of 1000 x 800 px), for no saving worth it (the per-call cost is small beside the resize)."""
        instructions = [self.instruction(t) for t in ocr_texts]
        rendered = {i: self.chat.render(self.tokenizer, i) for i in dict.fromkeys(instructions)}
        texts = [rendered[i] for i in instructions]
        if self.processor is not None:
            return self._prepare_with_processor([read_image(s) for s in sources], texts)
        parts = [self._pixels(s) for s in sources]
        vision = {k: torch.cat([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
        expanded = image_token_texts(self.model_type, vision, self.image_processor, self._base_config())
        texts = [t.replace(self.chat.placeholder, e, 1) for t, e in zip(texts, expanded)]
        return {"vision": vision, "prompt_ids": self.tokenizer(texts, add_special_tokens=False)["input_ids"],
                "per_token": {}}

    def _pixels(self, source) -> dict:
        vision = self.image_processor(images=[read_image(source)], return_tensors="pt")
        vision = {k: v for k, v in vision.items() if isinstance(v, torch.Tensor)}
        if self.model_type in IDEFICS_TYPES and vision["pixel_values"].dim() == 4:  # one image: its tiles
            vision["pixel_values"] = vision["pixel_values"][None]
        return vision

    def _prepare_with_processor(self, images: list, texts: list[str]) -> dict:
        out = self.processor(text=texts, images=[[im] for im in images], return_tensors="pt", padding=True,
                             padding_side="right", add_special_tokens=False)
        ids, lengths = out.pop("input_ids"), out.pop("attention_mask").sum(1).tolist()
        tensors = {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}
        per_token = {k: [row[:n].tolist() for row, n in zip(v, lengths)] for k, v in tensors.items()
                     if v.dim() == 2 and v.shape == ids.shape}
        vision = {k: v for k, v in tensors.items() if k not in per_token}
        return {"vision": vision, "prompt_ids": [row[:n].tolist() for row, n in zip(ids, lengths)],
                "per_token": per_token}

    def _base_config(self):
        return base_model(self.model).config

    def image_inputs(self, paths: Sequence, *, cache_dir: Optional[str], device, progress: bool,
                     desc: str = "images") -> VlmImages:
        texts = (read_ocr_texts(paths, self.cfg.ocr, cache_dir=cache_dir, progress=progress, desc=desc)
                 if self.cfg.ocr.enabled else None)
        return VlmImages(paths, texts)

    def collate(self, items: list[dict]) -> dict:
        """Training items -> right-padded prompt + description (labels on the description only);
        evaluation items -> left-padded prompts. The items' images are prepared here, together
        (`prepare_batch`: Qwen's flattened patches with their grid sizes, SmolVLM's tiles); images
        prepared one by one (`prepare`) are joined instead."""
        images = [it["image"] for it in items]
        ocr_texts = [im["ocr_text"] for im in images]
        prepared = (joined(images) if "prompt_ids" in images[0]
                    else self.prepare_batch([im["source"] for im in images], ocr_texts))
        batch = dict(prepared["vision"])
        if ocr_texts[0] is not None:
            batch["ocr_text"] = ocr_texts
        if "index" in items[0]:
            batch["index"] = torch.tensor([it["index"] for it in items])
        prompts = prepared["prompt_ids"]
        if "input_ids" in items[0]:
            rows = [p + list(it["input_ids"]) for p, it in zip(prompts, items)]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            labels = torch.full_like(ids, -100)
            for row, (p, r) in enumerate(zip(prompts, rows)):
                ids[row, :len(r)] = torch.tensor(r)
                mask[row, :len(r)] = 1
                labels[row, len(p):len(r)] = torch.tensor(r[len(p):])
            batch.update(input_ids=ids, attention_mask=mask, labels=labels)
            starts = [0] * len(prompts)
        else:
            width = max(map(len, prompts))
            ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, p in enumerate(prompts):
                ids[row, width - len(p):] = torch.tensor(p)
                mask[row, width - len(p):] = 1
            batch.update(input_ids=ids, attention_mask=mask)
            starts = [width - len(p) for p in prompts]
        for key, rows in prepared["per_token"].items():  # the processor's: 0 on the description and padding
            values = torch.zeros_like(batch["input_ids"])
            for row, (per_token, start) in enumerate(zip(rows, starts)):
                values[row, start:start + len(per_token)] = torch.tensor(per_token)
            batch[key] = values
        if self._needs_mm_types and "mm_token_type_ids" not in batch:
            batch["mm_token_type_ids"] = (mm_token_types(batch["input_ids"], self.image_token_id)
                                          * batch["attention_mask"])
        return batch

    # -- model ------------------------------------------------------------------------------
    def _model_inputs(self, batch: dict) -> dict:
        skip = ("labels", "index", "ocr_text", "unscored")
        return {k: v for k, v in batch.items() if k not in skip}

    def forward(self, batch: dict) -> dict:
        return self.loss(batch)

    def loss(self, batch: dict) -> dict:
        """Mean cross-entropy per scored description token. Logits are computed only from the
        shortest prompt's last position on (`scored_tail`): the prompt's own logits, image tokens
        included, would only be thrown away."""
        labels = without_unscored(batch["labels"], batch.get("unscored"))
        length = labels.shape[1]
        keep = scored_tail(labels)
        extra = {"logits_to_keep": keep} if self._keeps_logits else {}
        logits = self.model(**self._model_inputs(batch), use_cache=False, **extra).logits
        logits = logits[:, -keep:] if logits.shape[1] >= keep else logits
        return caption_loss(logits[:, :-1], labels[:, length - keep + 1:])

    @torch.no_grad()
    def generate(self, batch: dict, generation: GenerationConfig, synced_gpus: bool = False) -> list[list[str]]:
        """`num_return_sequences` descriptions per image, each ending at the end-of-turn token."""
        inputs = self._model_inputs(batch)
        start = inputs["input_ids"].shape[1]
        eos = [self.eos_id] + ([self.tokenizer.eos_token_id]
                               if self.tokenizer.eos_token_id not in (None, self.eos_id) else [])
        kwargs = hf_generate_kwargs(generation, eos_token_id=eos, pad_token_id=self.pad_id)
        if generation.quote == "copy":
            kwargs["logits_processor"] = LogitsProcessorList([self.quote_processor(require_ocr_text(batch), start)])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
            ids = self.model.generate(**inputs, synced_gpus=synced_gpus, **kwargs)
        texts = [t.strip() for t in self.tokenizer.batch_decode(ids[:, start:], skip_special_tokens=True)]
        return per_image(texts, generation.num_return_sequences)

    def quote_processor(self, texts: Sequence[str], start: int):
        """generation.quote=copy: each text's tokens forced after an opening quote mark (memecap/quote_copy.py)."""
        return self._quotes.with_tokenizer(self.tokenizer, texts, start=start)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return parameters_that_train(self)

    # -- save / load ------------------------------------------------------------------------
    @quiet_weights()
    def save_pretrained(self, out_dir: Path, generation: Optional[GenerationConfig] = None,
                        state_dict: Optional[dict] = None) -> None:
        """The PEFT adapter (mode=lora) or every weight (mode=full) as safetensors, the processing
        settings (tokenizer, image processor with the recipe's image budget, chat template), and
        `memecap.yaml` naming the base by Hub id + revision. `state_dict`: consolidated under ZeRO-3."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict() if state_dict is None else state_dict
        weights = {k[len("model."):]: v.detach().cpu().contiguous() for k, v in state_dict.items()
                   if k.startswith("model.")}
        v = self.cfg.vlm
        if v.mode == "lora":
            self.model.save_pretrained(out_dir / ADAPTER_DIR, state_dict=weights, safe_serialization=True,
                                       **ADAPTER_ONLY)
        else:
            self.model.save_pretrained(out_dir / MODEL_DIR, state_dict=weights, safe_serialization=True)
        processor = out_dir / PROCESSOR_DIR
        if self.processor is not None:
            self.processor.save_pretrained(processor)
        self.tokenizer.save_pretrained(processor)
        self.image_processor.save_pretrained(processor)
        if self.template is not None:
            (processor / TEMPLATE_FILE).write_text(self.template.text, encoding="utf-8")
        bases = {"vlm": base_entry("vlm", v.name, v.revision, needed_to_load=v.mode != "full",
                                   in_export=(MODEL_DIR, PROCESSOR_DIR) if v.mode == "full" else ())}
        what = (f"LoRA r={v.lora.r} on the language model" if v.mode == "lora" else "language model trained whole")
        write_export_config(out_dir, {"family": "vlm", "model": to_dict(self.cfg), "bases": bases,
                                      "generation": to_dict(generation) if generation else None,
                                      "architecture": [f"vision-language model `{self.model_type}`: {what}, "
                                                       f"vision tower {v.vision}"]})

    @classmethod
    def from_pretrained(cls, folder: Path, with_encoder: bool = True, cfg: Optional[ModelConfig] = None) -> "Vlm":
        """The base from the Hub id + revision the export names (or the export's own whole model),
        its processing settings from the export, then the adapter. (`with_encoder` is accepted for
        the protocol: the vision tower is part of the model.)"""
        from memecap.models.vlm.loading import load_base, load_processing, load_processor

        folder = Path(folder)
        cfg = cfg or model_config_from_export(read_export_config(folder)["model"])  # a merge passes its own
        whole = (folder / MODEL_DIR).is_dir()
        model = load_base(cfg, folder / MODEL_DIR if whole else None)
        tokenizer, image_processor, template = load_processing(cfg, str(folder / PROCESSOR_DIR), None,
                                                               model.config.model_type)
        processor = (None if model.config.model_type in KNOWN_TYPES
                     else load_processor(str(folder / PROCESSOR_DIR), None))
        if processor is not None:
            tokenizer, image_processor = processor.tokenizer, processor.image_processor
        if (folder / ADAPTER_DIR).is_dir():
            model = load_adapter(model, folder / ADAPTER_DIR)
        vlm = cls(cfg, model, tokenizer, image_processor, template, processor)
        vlm.requires_grad_(False)
        return vlm.eval()
