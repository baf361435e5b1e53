"""Builders the test modules share: tiny configs and models, batches, and the run-folder readers.
Fixtures live in tests/conftest.py; a test module imports from here, never from another test module."""
from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import torch

from memecap.config import TinyConfig, load_config

TEST_TINY = TinyConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=1, embed_dim=32,
                       gpt_width=32, gpt_layers=2, gpt_heads=2, vocab_size=300, rudolph_text_tokens=24)

# A quick LoRA run on the synthetic set: frozen cached encoder, one epoch.
LORA_RUN = ("model.decoder.mode=lora", "model.encoder.trainable=false", "model.encoder.features=pooled",
            "train.epochs=1", "eval.compare_constant=false", "generation.max_new_tokens=8")

# A short run that leaves a checkpoint every two steps, for the resume and refusal tests.
QUICK_CHECKPOINTS = ("train.save_every=2", "train.eval_every=100", "eval.compare_constant=false",
                     "train.keep_checkpoints=5")


# -- runs of the real loop ------------------------------------------------------------------------

def tiny_run_config(out_dir: Path, synthetic_data: dict, *overrides: str, recipe: str = "demo"):
    """The demo recipe shrunk to seconds: tiny sizes, small data, no trackers or progress bars."""
    tiny = [f"model.tiny.{k}={v}" for k, v in vars(TEST_TINY).items()]
    return load_config(recipe, [
        f"data.train={synthetic_data['train']}", f"data.val={synthetic_data['val']}",
        f"train.output_dir={out_dir}", f"cache.dir={out_dir / 'cache'}",
        "train.trackers=[]", "train.progress_bar=false", "train.batch_size=8", "eval.batch_size=4",
        "optim.warmup_steps=2", "generation.max_new_tokens=12", "train.log_every=1", "eval.samples_to_show=1",
        *tiny, *overrides,
    ])


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; each in-process run needs a clean slate."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


def straight_and_resumed(tmp_path: Path, data: dict, common: tuple, step: int) -> tuple[Path, Path]:
    """The tiny run of `common` straight through, and again resumed from its checkpoint at `step`
    (in a fresh folder with the same tiny bases): the run folders, for the caller to compare."""
    from memecap import train

    straight = tmp_path / "straight"
    try:
        train.main(tiny_run_config(straight, data, *common))
    finally:
        reset_accelerate()
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "base_models", resumed / "base_models")
    train.main(tiny_run_config(resumed, data, *common, f"train.resume={straight / 'checkpoints' / f'step_{step:07d}'}"))
    return straight, resumed


def assert_resumed_exactly(straight: Path, resumed: Path, steps: list[int], parts: tuple[str, ...]) -> None:
    """The resumed run logged `steps` with the straight run's losses, and exported the same `parts`."""
    import pytest
    from safetensors.torch import load_file

    a, b = ({r["step"]: r["loss"] for r in log_rows(run)} for run in (straight, resumed))
    assert sorted(b) == steps
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])
    for part in parts:
        wa, wb = load_file(straight / "final" / part), load_file(resumed / "final" / part)
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=1e-6)


def checkpointed_run(out: Path, data: dict, *overrides: str, recipe: str = "demo") -> dict:
    """The tiny run of `recipe` with QUICK_CHECKPOINTS, leaving Accelerate clean however it ends."""
    from memecap import train

    try:
        return train.main(tiny_run_config(out, data, *QUICK_CHECKPOINTS, *overrides, recipe=recipe))
    finally:
        reset_accelerate()


def log_rows(out: Path, kind: str = "train") -> list[dict]:
    """The rows of one kind in a run's log.jsonl, in the order they were written."""
    rows = map(json.loads, (out / "log.jsonl").read_text().splitlines())
    return [r for r in rows if r["kind"] == kind]


def nudge_trained_parts(model) -> None:
    """Move every trained part away from its initial value, so an export that dropped one shows."""
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))


def one_image_folder(synthetic_data: dict, tmp_path: Path) -> Path:
    """A folder holding the first synthetic training image, for the `caption` command."""
    folder = tmp_path / "images"
    folder.mkdir()
    first = sorted((Path(synthetic_data["train"]).parent / "images").glob("*.jpg"))[0]
    shutil.copy(first, folder / first.name)
    return folder


# -- ClipCap --------------------------------------------------------------------------------------

def ruclip_model_module():
    """ruclip's model.py, loaded by path: the package __init__ needs torchvision and youtokentome,
    which the image tower does not."""
    spec = importlib.util.find_spec("ruclip")
    assert spec is not None, "the ruclip package must be installed (pip install --no-deps ruclip==0.0.2)"
    path = Path(list(spec.submodule_search_locations)[0]) / "model.py"
    module_spec = importlib.util.spec_from_file_location("_ruclip_model_for_tests", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def save_tiny_ruclip(folder: Path, image_resolution: int = 32, vision_width: int = 64, embed_dim: int = 32):
    """A random `ruclip.model.CLIP` in ruCLIP's published layout (config.json + pytorch_model.bin)."""
    config = {"embed_dim": embed_dim, "image_resolution": image_resolution, "vision_layers": 1,
              "vision_width": vision_width, "vision_patch_size": 8, "context_length": 8, "vocab_size": 32,
              "transformer_width": 32, "transformer_heads": 2, "transformer_layers": 1}
    torch.manual_seed(0)
    clip = ruclip_model_module().CLIP(**config)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(clip.state_dict(), folder / "pytorch_model.bin")
    return clip


def recipe_with_tiny_bases(recipe, ruclip_dir, gpt2_dir, *overrides):
    """A shipped recipe with its Hub ids swapped for tiny models saved in the same layouts."""
    return load_config(recipe, [f"model.encoder.name={ruclip_dir}", f"model.decoder.name={gpt2_dir}",
                                "model.mapper.num_heads=2", "model.mapper.num_layers=1", *overrides])


def clipcap_batch(model, examples, n=4, cache_dir=None):
    """A training batch of the first `n` examples, each with its first caption."""
    images = model.image_inputs([e.image_path for e in examples[:n]], cache_dir=cache_dir, device="cpu",
                                progress=False)
    items = [{"image": images[i], "input_ids": model.encode_caption(e.captions[0], 64)}
             for i, e in enumerate(examples[:n])]
    return model.collate(items)


def ocr_model(recipe, tiny_ruclip_dir, tiny_gpt2_dir, tmp_path, *overrides):
    from memecap.models import build_model

    cfg = recipe_with_tiny_bases(recipe, tiny_ruclip_dir, tiny_gpt2_dir, *overrides)
    return build_model(cfg.model, work_dir=tmp_path)


def prompted(model, examples, texts):
    """Image features of the first examples with given OCR texts: the layout is under test, not the OCR."""
    from memecap.models.prompted import PromptedImages

    feats = model._visual_inputs([e.image_path for e in examples[:len(texts)]], cache_dir=None, device="cpu",
                                 progress=False, desc="")
    return PromptedImages(feats, [model.encode_prompt(t) for t in texts], list(texts))


# -- image backbones (model.encoder.kind: auto) -----------------------------------------------------

# Not any library's default: the encoder must take them from the processor.
BACKBONE_MEAN, BACKBONE_STD = [0.1, 0.2, 0.3], [0.4, 0.5, 0.6]


def tiny_backbone(arch: str):
    """(config, image processor) of a tiny random backbone that takes 32 px images."""
    from transformers import (BitImageProcessorPil, ConvNextConfig, ConvNextImageProcessorPil, Dinov2Config,
                              EfficientNetConfig, EfficientNetImageProcessorPil, ResNetConfig, ViTConfig,
                              ViTImageProcessorPil)

    square = {"height": 32, "width": 32}
    norm = {"image_mean": BACKBONE_MEAN, "image_std": BACKBONE_STD}
    if arch == "efficientnet":  # hidden_dim >= the last map's side, or its pooler is not global
        return (EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=128, image_size=32),
                EfficientNetImageProcessorPil(size=square, include_top=False, **norm))
    if arch == "convnext":
        return (ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
                ConvNextImageProcessorPil(size={"shortest_edge": 32}, **norm))
    if arch == "resnet":
        return (ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
                ConvNextImageProcessorPil(size={"shortest_edge": 32}, **norm))
    if arch == "vit":
        return (ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          image_size=32, patch_size=8),
                ViTImageProcessorPil(size=square, **norm))
    if arch == "dinov2":  # its processor resizes then crops, as the published ones do
        return (Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2, image_size=32,
                             patch_size=8),
                BitImageProcessorPil(size={"shortest_edge": 40}, crop_size=square, **norm))
    raise ValueError(arch)


def save_backbone(folder, arch: str, seed: int = 0):
    from transformers import AutoModel

    config, processor = tiny_backbone(arch)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model


# -- RuDOLPH --------------------------------------------------------------------------------------

def rudolph_overrides(tiny: dict) -> list[str]:
    """Point a RuDOLPH recipe at the tiny model instead of the Hub ids."""
    return [f"model.rudolph.name={tiny['name']}", f"model.rudolph.vqgan={tiny['utils']}",
            f"model.rudolph.tokenizer={tiny['utils']}"]


def build_rudolph(tiny, recipe="rudolph_350m", *overrides, work_dir):
    from memecap.models import build_model

    return build_model(load_config(recipe, [*rudolph_overrides(tiny), *overrides]).model, work_dir=work_dir)


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def with_texts(model, examples, texts):
    """VQGAN codes of the first images with the given OCR texts: the layout is under test, not the OCR."""
    from memecap.models.prompted import PromptedImages

    codes = model._codes([e.image_path for e in examples[:len(texts)]], cache_dir=None, device="cpu",
                         progress=False, desc="")
    return PromptedImages(codes, [model.encode_left(t) for t in texts], list(texts))


def rudolph_run_config(recipe, out: Path, data: dict, tiny: dict, *overrides):
    """A shipped RuDOLPH recipe on the tiny model and the synthetic set, shrunk to seconds."""
    return load_config(recipe, [
        *rudolph_overrides(tiny), f"data.train={data['train']}", f"data.val={data['val']}",
        f"train.output_dir={out}", f"cache.dir={out / 'cache'}", "train.trackers=[]", "train.progress_bar=false",
        "train.batch_size=8", "train.grad_accum=1", "eval.batch_size=4", "optim.lr=3e-3", "optim.warmup_steps=2",
        "generation.max_new_tokens=12", "train.log_every=1", "eval.samples_to_show=1", *overrides])


def stacked(items) -> torch.Tensor:
    """What a model read of each image (a tensor, or cached features read item by item) as one tensor."""
    return torch.stack([items[i] for i in range(len(items))])
