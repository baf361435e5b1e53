"""memecap's vision-language inputs equal the official processors' for every architecture whose image
tokens memecap expands itself (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, SmolVLM): input ids, attention
masks, image grids / pixel masks, pixels and labels, for a batch of generation prompts (left-padded)
and a batch of training sequences (right-padded, the prompt unscored).

The official processor classes are used as they are, with their image processor and tokenizer read
from the tiny base's published files; only their video processor is left out (it needs torchvision,
which memecap does not). SmolVLM's processor also refuses to start without `num2words`, which it
uses only to write a video's frame count: a stand-in that fails if called takes its place."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from memecap.config import load_config
from memecap.data.datasets import CaptionEvalSet
from memecap.models import build_model

# The space of `Assistant: На` and `Assistant: Мем` merges with the first letter in SmolVLM's BPE.
CAPTIONS = ['На фото кот сидит на диване. Подпись: "когда понедельник"', "На фото собака в шапке.",
            "Мем про кота: кот смотрит в окно", "На фото красный квадрат на белом фоне."]
ARCHS = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "smolvlm"]


def images() -> list[Image.Image]:
    # Different sizes: Qwen makes a different number of image tokens for each, so rows pad differently.
    return [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("RGB", (32, 64), (10, 200, 10)),
            Image.new("RGB", (50, 50), (10, 10, 200)), Image.new("RGB", (24, 24), (250, 250, 0))]


def no_video_frames(_):
    raise AssertionError("num2words is used for videos only")


def official_processor(folder: Path, arch: str, config):
    """The architecture's own processor class, built from the base's files without a video processor."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    name = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor",
            "smolvlm": "SmolVLMProcessor"}[arch]

    class WithoutVideo(getattr(transformers, name)):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    image_processor = AutoImageProcessor.from_pretrained(folder, backend="pil")
    extra = {}
    if arch == "smolvlm":
        import transformers.models.smolvlm.processing_smolvlm as smolvlm

        if smolvlm.num2words is None:
            smolvlm.num2words = no_video_frames
        v = config.vision_config
        extra["image_seq_len"] = (v.image_size // v.patch_size) ** 2 // config.scale_factor ** 2
    return WithoutVideo(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                        chat_template=tokenizer.chat_template, **extra)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vlm_parity")


def build(work: Path, arch: str):
    cfg = load_config("vlm_tiny", [f"model.vlm.tiny_architecture={arch}", "model.vlm.mode=lora"]).model
    torch.manual_seed(0)
    model = build_model(cfg, work_dir=work, train_texts=CAPTIONS)
    return model, official_processor(Path(model.cfg.vlm.name), arch, model.model.get_base_model().config)


def user_turn(model) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": model.cfg.vlm.instruction}]}]


def render(processor, messages: list[dict], generation: bool = False) -> str:
    # The tokenizer renders the processor's template: SmolVLM's own apply_chat_template reads video settings.
    return processor.tokenizer.apply_chat_template(messages, chat_template=processor.chat_template, tokenize=False,
                                                   add_generation_prompt=generation)


def assert_same_inputs(ours: dict, official, keys: tuple[str, ...]) -> None:
    for key in keys:
        assert torch.equal(ours[key], official[key]), key
    if "mm_token_type_ids" in ours:  # Qwen2-VL and Qwen3-VL need them (Qwen2.5-VL does not)
        assert torch.equal(ours["mm_token_type_ids"], official["mm_token_type_ids"])


def vision_keys(arch: str) -> tuple[str, ...]:
    return ("pixel_values", "pixel_attention_mask") if arch == "smolvlm" else ("pixel_values", "image_grid_thw")


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_batch_equals_the_official_processor(arch, work, one_thread):
    model, processor = build(work, arch)
    evals = CaptionEvalSet(model.image_inputs(images(), cache_dir=None, device="cpu", progress=False))
    ours = model.collate([evals[i] for i in range(4)])
    prompt = render(processor, user_turn(model), generation=True)
    official = processor(text=[prompt] * 4, images=[[im] for im in images()], padding=True, padding_side="left",
                         return_tensors="pt")
    assert_same_inputs(ours, official, ("input_ids", "attention_mask", *vision_keys(arch)))


@pytest.mark.parametrize("arch", ARCHS)
def test_training_batch_equals_the_official_processor(arch, work, one_thread):
    """The conversation rendered whole (the answer as the template writes it, up to its end-of-turn
    token) and tokenized by the processor; labels are its ids after the generation prompt."""
    model, processor = build(work, arch)
    inputs = model.image_inputs(images(), cache_dir=None, device="cpu", progress=False)
    ours = model.collate([{"image": inputs[i], "input_ids": model.encode_caption(c, 64)}
                          for i, c in enumerate(CAPTIONS)])
    prompt = render(processor, user_turn(model), generation=True)
    end = model.tokenizer.convert_ids_to_tokens(model.eos_id)
    texts = []
    for caption in CAPTIONS:
        answer = {"role": "assistant", "content": [{"type": "text", "text": caption}]}
        full = render(processor, user_turn(model) + [answer])
        assert full.startswith(prompt)
        texts.append(full[:full.index(end, len(prompt)) + len(end)])
    official = processor(text=texts, images=[[im] for im in images()], padding=True, padding_side="right",
                         return_tensors="pt")
    assert_same_inputs(ours, official, ("input_ids", "attention_mask", *vision_keys(arch)))
    labels = official["input_ids"].masked_fill(official["attention_mask"] == 0, -100)
    for row, image in enumerate(images()):
        prompt_length = processor(text=[prompt], images=[[image]], return_tensors="pt")["input_ids"].shape[1]
        labels[row, :prompt_length] = -100
    assert torch.equal(ours["labels"], labels)
    if arch == "smolvlm":  # the tokenizer has the merge that made the split visible
        first = model.tokenizer.convert_ids_to_tokens(ours["labels"][0][ours["labels"][0] != -100].tolist())[0]
        assert first.startswith("Ġ") and len(first) > 1
