"""Tiny random-initialised vision-language models of the real classes, in the published layout.

`save_tiny_vlm(folder, "qwen2_vl", texts)` writes what a Hub repo of that architecture holds:
config.json + model.safetensors of `Qwen2VLForConditionalGeneration` (or Qwen2.5-VL, Qwen3-VL,
SmolVLM), a byte-level BPE tokenizer fit on `texts` with the architecture's special tokens and
chat template, and the real image processor's settings. The demo-like recipes and the tests load
it through exactly the path that loads Hub weights (memecap/models/vlm/loading.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
from transformers import AutoModelForImageTextToText, PreTrainedTokenizerFast

from memecap.models.tiny import byte_level_bpe, save_on_any_process

# The templates are the published ones cut to what captioning uses (a user turn with an image and
# text, an assistant turn); the published Qwen2-VL template adds the same default system turn.
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() }}: {% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}</s>{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]
SMOLVLM_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<global-img>",
                   "<image>"]

LLAVA_SPECIAL = ["<|endoftext|>", "<s>", "</s>", "<image>"]

TEXT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
            max_position_embeddings=1024)
IMAGE_SIDE = 32  # SmolVLM's tile; Qwen images are budgeted by pixels below


def tiny_tokenizer(texts: Iterable[str], special: list[str], eos: str, template: str,
                   vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tok = byte_level_bpe(texts, special, vocab_size)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token="<|endoftext|>")
    tokenizer.chat_template = template
    return tokenizer


def answers_too(texts: Iterable[str]) -> list[str]:
    """The texts, and each as SmolVLM's template writes an answer (`Assistant: text`): a BPE fit on
    chat data learns the merges of the space with an answer's first letter (`ĠМ`), as the published
    SmolVLM tokenizer has them, so tests see the split the model was trained on."""
    texts = list(texts)
    return texts + [" " + t for t in texts]


def _qwen(arch: str, tokenizer, width: int = 32, layers: int = 2, patch: int = 4):
    from transformers import Qwen2VLImageProcessorPil

    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in QWEN_SPECIAL}
    special = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                   vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    # head_dim 16 at every width, so the M-RoPE sections below fit
    text = dict(TEXT, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                num_attention_heads=width // 16, vocab_size=len(tokenizer), eos_token_id=ids["<|im_end|>"],
                bos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"])
    vw = width // 2
    if arch == "qwen2_vl":
        from transformers import Qwen2VLConfig

        config = Qwen2VLConfig(text_config=dict(text, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
                               vision_config=dict(depth=layers - 1, embed_dim=vw, hidden_size=width, num_heads=2,
                                                  mlp_ratio=2, patch_size=patch, spatial_merge_size=2,
                                                  temporal_patch_size=2),
                               **special)
    elif arch == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        config = Qwen2_5_VLConfig(text_config=dict(text, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
                                  vision_config=dict(depth=layers, hidden_size=vw, intermediate_size=width, num_heads=2,
                                                     out_hidden_size=width, patch_size=patch, spatial_merge_size=2,
                                                     temporal_patch_size=2, window_size=4 * patch * 2,
                                                     fullatt_block_indexes=[layers - 1]),
                                  **special)
    else:
        from transformers import Qwen3VLConfig

        config = Qwen3VLConfig(text_config=dict(text, head_dim=16, rope_parameters={
                                   "rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2],
                                   "mrope_interleaved": True}),
                               vision_config=dict(depth=layers, hidden_size=vw, intermediate_size=width, num_heads=2,
                                                  out_hidden_size=width, patch_size=patch, spatial_merge_size=2,
                                                  temporal_patch_size=2, num_position_embeddings=64,
                                                  deepstack_visual_indexes=[0]),
                               **special)
    # (2 patch)^2 px per image token (merge 2): at patch 4 a 32 x 32 image is 16 tokens.
    side = 2 * patch
    processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                         min_pixels=4 * side * side, max_pixels=16 * side * side)
    return config, processor


def _smolvlm(tokenizer):
    from transformers import SmolVLMConfig, SmolVLMImageProcessorPil

    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in SMOLVLM_SPECIAL}
    config = SmolVLMConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=IMAGE_SIDE, patch_size=8),
        text_config=dict(TEXT, model_type="llama", vocab_size=len(tokenizer), bos_token_id=None,
                         eos_token_id=ids["<end_of_utterance>"], pad_token_id=ids["<|endoftext|>"]),
        scale_factor=2, image_token_id=ids["<image>"], pad_token_id=ids["<|endoftext|>"])
    processor = SmolVLMImageProcessorPil(do_image_splitting=False, size={"longest_edge": IMAGE_SIDE},
                                         max_image_size={"longest_edge": IMAGE_SIDE})
    return config, processor


def _llava(tokenizer, out_dir: Path):
    """LLaVA goes through its own LlavaProcessor (memecap does not expand its image tokens itself)."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaProcessor

    image_processor = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIDE},
                                            crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8, image_token="<image>",
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=LLAVA_TEMPLATE).save_pretrained(out_dir)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=IMAGE_SIDE, patch_size=8),
        text_config=dict(TEXT, model_type="llama", vocab_size=len(tokenizer), bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
        vision_feature_select_strategy="default")
    return config, image_processor


def save_tiny_vlm(out_dir: Path, architecture: str, texts: Iterable[str], seed: int = 0, *, width: int = 32,
                  layers: int = 2, patch: int = 4) -> Path:
    """A tiny `architecture` (qwen2_vl | qwen2_5_vl | qwen3_vl | smolvlm | llava) with random weights, a
    tokenizer fit on `texts` (the captions and the instruction), its chat template and image processor.
    `width`, `layers`, `patch` (Qwen only) make larger reduced shapes for benchmarks."""
    texts = list(texts)
    out_dir = Path(out_dir)
    if architecture == "llava":
        tokenizer = tiny_tokenizer(texts, LLAVA_SPECIAL, "</s>", LLAVA_TEMPLATE)
        config, image_processor = _llava(tokenizer, out_dir)
    elif architecture == "smolvlm":
        tokenizer = tiny_tokenizer(answers_too(texts), SMOLVLM_SPECIAL, "<end_of_utterance>", SMOLVLM_TEMPLATE)
        config, image_processor = _smolvlm(tokenizer)
        # Some random draws of this 32 px model write the same greedy caption for any plain-coloured
        # image; this one tells them apart, so tests can see that each image reaches the model.
        seed += 2
    else:
        tokenizer = tiny_tokenizer(texts, QWEN_SPECIAL, "<|im_end|>", QWEN_TEMPLATE)
        config, image_processor = _qwen(architecture, tokenizer, width, layers, patch)
    with torch.random.fork_rng():  # leave the caller's random stream untouched
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
    save_on_any_process(model, out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    return out_dir


def save_shaped_vlm(out_dir: Path, config, texts: Iterable[str], seed: int = 0) -> Path:
    """A random model of a published shape (`config`, e.g. memecap.models.vlm.known.known_config) in
    the published layout, with a tiny tokenizer whose special tokens the config is pointed at: what
    memory is measured on where the real weights cannot be downloaded. The vocabulary (and so the
    logits' size) stays the published one. Qwen-VL and SmolVLM shapes."""
    texts = list(texts)
    qwen = config.model_type != "smolvlm"
    tokenizer = (tiny_tokenizer(texts, QWEN_SPECIAL, "<|im_end|>", QWEN_TEMPLATE) if qwen
                 else tiny_tokenizer(answers_too(texts), SMOLVLM_SPECIAL, "<end_of_utterance>", SMOLVLM_TEMPLATE))
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in (QWEN_SPECIAL if qwen else SMOLVLM_SPECIAL)}
    text = config.get_text_config()
    vision = config.vision_config
    if qwen:
        from transformers import Qwen2VLImageProcessorPil

        config.image_token_id, config.video_token_id = ids["<|image_pad|>"], ids["<|video_pad|>"]
        config.vision_start_token_id, config.vision_end_token_id = ids["<|vision_start|>"], ids["<|vision_end|>"]
        text.eos_token_id, text.pad_token_id = ids["<|im_end|>"], ids["<|endoftext|>"]
        image_processor = Qwen2VLImageProcessorPil(patch_size=vision.patch_size, merge_size=vision.spatial_merge_size,
                                                   temporal_patch_size=vision.temporal_patch_size)
    else:
        from transformers import SmolVLMImageProcessorPil

        config.image_token_id = ids["<image>"]
        text.eos_token_id, text.pad_token_id = ids["<end_of_utterance>"], ids["<|endoftext|>"]
        image_processor = SmolVLMImageProcessorPil(do_image_splitting=False, size={"longest_edge": vision.image_size},
                                                   max_image_size={"longest_edge": vision.image_size})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    image_processor.save_pretrained(out_dir)
    return out_dir
