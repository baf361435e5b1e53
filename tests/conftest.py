"""Shared offline fixtures: tiny random base models of the real classes, saved in their published
layouts, and a small synthetic dataset in the meme table format."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that tries the Hub fails fast instead of hanging
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from memecap.config import TinyConfig, load_config  # noqa: E402
from memecap.data.synthetic import make_synthetic_dataset  # noqa: E402
from memecap.data.tables import load_split  # noqa: E402
from memecap.models.tiny import save_tiny_gpt2  # noqa: E402

TEST_TINY = TinyConfig(image_size=32, patch_size=8, vision_width=32, vision_layers=1, embed_dim=32,
                       gpt_width=32, gpt_layers=2, gpt_heads=2, vocab_size=300, rudolph_text_tokens=24)


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


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_dataset(root, n_train=48, n_val=13, image_size=32, seed=1)


@pytest.fixture(scope="session")
def tiny_ruclip_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ruclip") / "ruclip-tiny"
    save_tiny_ruclip(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, synthetic_data) -> Path:
    examples, _ = load_split(synthetic_data["train"], log=None)
    folder = tmp_path_factory.mktemp("gpt2") / "rugpt3-tiny"
    save_tiny_gpt2(folder, TEST_TINY, [c for ex in examples for c in ex.captions])
    return folder


@pytest.fixture(scope="session")
def tiny_rudolph(tmp_path_factory, synthetic_data) -> dict:
    """A tiny random RuDOLPH (3 layers, width 32, 4x4 image codes, 24 caption positions), its
    VQGAN and a BPE fit on the synthetic captions, in the published layouts."""
    from memecap.models.rudolph.tiny import save_tiny_rudolph_bases

    examples, _ = load_split(synthetic_data["train"], log=None)
    model_dir, utils = save_tiny_rudolph_bases(tmp_path_factory.mktemp("rudolph"), TEST_TINY,
                                               [c for ex in examples for c in ex.captions])
    return {"name": model_dir, "utils": utils}


@pytest.fixture()
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared machine two threads that
    wait for each other make every small op slow (5-10x measured under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rudolph_overrides(tiny: dict) -> list[str]:
    """Point a RuDOLPH recipe at the tiny model instead of the Hub ids."""
    return [f"model.rudolph.name={tiny['name']}", f"model.rudolph.vqgan={tiny['utils']}",
            f"model.rudolph.tokenizer={tiny['utils']}"]


def reset_accelerate() -> None:
    """Accelerate keeps process-wide singletons; each in-process run needs a clean slate."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


# A quick LoRA run on the synthetic set: frozen cached encoder, one epoch.
LORA_RUN = ("model.decoder.mode=lora", "model.encoder.trainable=false", "model.encoder.features=pooled",
            "train.epochs=1", "eval.compare_constant=false", "generation.max_new_tokens=8")


@pytest.fixture(scope="session")
def tiny_lora_run(tmp_path_factory, synthetic_data) -> Path:
    """A finished run folder (exports, predictions, log) that tests read but never change."""
    from memecap.train import main

    out = tmp_path_factory.mktemp("lora_run") / "run"
    main(tiny_run_config(out, synthetic_data, *LORA_RUN))
    return out


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


@pytest.fixture(scope="session")
def text_images(tmp_path_factory) -> dict:
    """Images with known Cyrillic text (tests/ocr_images.py), a table describing them, and one
    Tesseract pass over them in the process pool, whose cache the other OCR tests reuse."""
    from memecap.config import OcrConfig
    from memecap.ocr import read_texts
    from tests.ocr_images import make_text_images

    root = tmp_path_factory.mktemp("ocr")
    paths, table = make_text_images(root)
    cache = root / "cache"
    texts = read_texts(paths, OcrConfig(workers=2), cache_dir=cache / "ocr", progress=False)
    return {"root": root, "paths": paths, "table": table, "texts": texts, "cache": cache}


def nudge_trained_parts(model) -> None:
    """Move every trained part away from its initial value, so an export that dropped one shows."""
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
