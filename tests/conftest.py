"""Shared offline fixtures: tiny random base models of the real classes, saved in their published
layouts, and a small synthetic dataset in the meme table format."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that tries the Hub fails fast instead of hanging
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from memecap.data.synthetic import make_synthetic_dataset  # noqa: E402
from memecap.data.tables import load_split  # noqa: E402
from memecap.models.tiny import save_tiny_gpt2  # noqa: E402
from tests.helpers import LORA_RUN, TEST_TINY, reset_accelerate, save_tiny_ruclip, tiny_run_config  # noqa: E402


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
def examples(synthetic_data) -> list:
    """The synthetic training examples (frozen records): read them, never change the list."""
    return load_split(synthetic_data["train"], log=None)[0]


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, examples) -> Path:
    folder = tmp_path_factory.mktemp("gpt2") / "rugpt3-tiny"
    save_tiny_gpt2(folder, TEST_TINY, [c for ex in examples for c in ex.captions])
    return folder


@pytest.fixture(scope="session")
def tiny_rudolph(tmp_path_factory, examples) -> dict:
    """A tiny random RuDOLPH (3 layers, width 32, 4x4 image codes, 24 caption positions), its
    VQGAN and a BPE fit on the synthetic captions, in the published layouts."""
    from memecap.models.rudolph.tiny import save_tiny_rudolph_bases

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


@pytest.fixture()
def fresh_accelerate_state():
    """Accelerate's process-wide state reset after the test, for the next in-process run."""
    yield
    reset_accelerate()


@pytest.fixture(scope="session")
def tiny_lora_run(tmp_path_factory, synthetic_data) -> Path:
    """A finished run folder (exports, predictions, log) that tests read but never change."""
    from memecap.train import main

    out = tmp_path_factory.mktemp("lora_run") / "run"
    main(tiny_run_config(out, synthetic_data, *LORA_RUN))
    return out


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


@pytest.fixture(scope="session")
def vlm_exports(tmp_path_factory) -> dict:
    """A tiny Qwen2-VL's base folder and its exports: LoRA (adapter + processor/) and whole (model/ too).
    Tests copy a folder before they change it."""
    from memecap.config import GenerationConfig, load_config
    from memecap.models import build_model

    captions = ["На фото кот сидит на диване.", "На фото собака в шапке.", "На фото мужчина у доски."]
    root = tmp_path_factory.mktemp("vlm_exports")
    out = {}
    for mode in ("lora", "full"):
        cfg = load_config("vlm_tiny", ["model.vlm.tiny_architecture=qwen2_vl", f"model.vlm.mode={mode}"]).model
        model = build_model(cfg, work_dir=root, train_texts=captions)
        model.save_pretrained(root / mode, generation=GenerationConfig(strategy="greedy", max_new_tokens=4))
        out[mode], out["base"] = root / mode, Path(model.cfg.vlm.name)
    return out


@pytest.fixture
def standin_hub():
    """A running StandinHub (tests/hub_standin.py) that requires STANDIN_TOKEN, with
    `online(hub.url, STANDIN_TOKEN)` applied."""
    from tests.hub_standin import STANDIN_TOKEN, StandinHub, online

    with StandinHub(token=STANDIN_TOKEN) as hub, online(endpoint=hub.url, token=STANDIN_TOKEN):
        yield hub
