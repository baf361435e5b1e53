"""The prompt of a vision-language model: one chat turn (image + Russian instruction), its image
tokens expanded as the model's processor would, and the token that ends the answer.

The processors of Qwen2-VL/Qwen2.5-VL/Qwen3-VL need a video processor (torchvision) even for
images, so memecap bypasses them for the architectures it knows: the image processor makes the
pixels, and the one image placeholder of the rendered chat turn is expanded here to the number of
image tokens those pixels become. What the bypassed processor would also return is rebuilt:
Qwen2-VL and Qwen3-VL need `mm_token_type_ids` (1 on image tokens) for their M-RoPE positions.
Other architectures go through their own `AutoProcessor`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from memecap.models.vlm.template import ChatTemplate, render_chat

QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
IDEFICS_TYPES = ("smolvlm", "idefics3")
KNOWN_TYPES = QWEN_TYPES + IDEFICS_TYPES  # expanded here; any other architecture goes through its AutoProcessor
MARKER = "\u2063MEMECAP_ANSWER\u2063"  # stands for the answer when the template is rendered once to find its end


@dataclass
class ChatFormat:
    """How one prompt is written for a model (see `chat_format`)."""

    template: Optional[ChatTemplate]  # the model's jinja template, rendered with bounded work; None: a plain prompt
    placeholder: str  # the image token the rendered turn holds once
    answer_prefix: str  # text between the generation prompt and the answer (SmolVLM: a space)
    end_id: int  # the token that ends an answer (Qwen <|im_end|>, SmolVLM <end_of_utterance>)

    def render(self, tokenizer, instruction: str) -> str:
        """The user turn (image, then the instruction) and the assistant's generation prompt, as
        the official processor is given it: the answer prefix is not part of the prompt."""
        if self.template is None:
            return f"{self.placeholder}{instruction}\nОписание:"
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        return render_chat(self.template, messages, tokenizer, add_generation_prompt=True)

    def answer_ids(self, tokenizer, text: str) -> list[int]:
        """The answer's token ids with its prefix tokenized in: the rendered conversation writes
        SmolVLM's `Assistant: Мем` as `:`, `ĠМ`, `ем`, so a lone space token at the end of the prompt
        and an answer tokenized without it would be a split the model never saw. The model writes
        the prefix itself when it generates."""
        return tokenizer(self.answer_prefix + text, add_special_tokens=False)["input_ids"]


def chat_format(tokenizer, template: Optional[ChatTemplate], placeholder: str) -> ChatFormat:
    """Render a turn with a marker answer once: what the template writes between its generation
    prompt and the answer joins the prompt, and the first token after the answer ends every caption."""
    eos = tokenizer.eos_token_id
    if template is None:
        return ChatFormat(None, placeholder, " ", eos)
    user = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
    prompt = render_chat(template, user, tokenizer, add_generation_prompt=True)
    answer = {"role": "assistant", "content": [{"type": "text", "text": MARKER}]}
    full = render_chat(template, user + [answer], tokenizer)
    if not full.startswith(prompt) or MARKER not in full:
        return ChatFormat(template, placeholder, "", eos)
    between, after = full[len(prompt):].split(MARKER, 1)
    after_ids = tokenizer(after, add_special_tokens=False)["input_ids"]
    return ChatFormat(template, placeholder, between, after_ids[0] if after_ids else eos)


def image_placeholder(model_type: str, tokenizer, config) -> str:
    if model_type in QWEN_TYPES:
        return "<|image_pad|>"
    if model_type in IDEFICS_TYPES:
        return "<image>"
    return tokenizer.convert_ids_to_tokens(config.image_token_id)


def image_token_texts(model_type: str, vision: dict, image_processor, config) -> list[str]:
    """Per image of a batch, the text its placeholder becomes for these processed pixels (what the
    model's processor writes): Qwen one <|image_pad|> per merged patch; Idefics3/SmolVLM one tile."""
    if model_type in QWEN_TYPES:
        merge = getattr(image_processor, "merge_size", 2)
        return ["<|image_pad|>" * (int(grid.prod()) // merge ** 2) for grid in vision["image_grid_thw"]]
    if model_type in IDEFICS_TYPES:
        if vision["pixel_values"].shape[1] != 1:
            raise ValueError(f"{model_type}: memecap feeds one tile per image; set do_image_splitting off "
                             "(model.vlm.longest_edge sets the tile's side)")
        v = config.vision_config
        tokens = (v.image_size // v.patch_size) ** 2 // config.scale_factor ** 2
        one = "<fake_token_around_image><global-img>" + "<image>" * tokens + "<fake_token_around_image>"
        return [one] * vision["pixel_values"].shape[0]
    raise ValueError(f"model type {model_type!r}: no image-token expansion known (its processor is used instead)")


def mm_token_types(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """What Qwen-VL processors return as `mm_token_type_ids`: 1 on image tokens, 0 elsewhere."""
    return (input_ids == image_token_id).long()
