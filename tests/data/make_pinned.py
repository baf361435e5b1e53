"""Write the pinned test data: one tiny export per family (ClipCap LoRA, RuDOLPH, CNN+LSTM) in
the layout a push uploads (local bases bundled), the captions each gives for three synthetic
images, and the per-step training losses of each family's fixed-seed tiny run.

    .venv/bin/python tests/data/make_pinned.py      # from the repository root; about a minute

`tests/test_pinned.py` checks today's code against these files: exports written by an earlier
memecap keep loading and captioning the same, and no refactor changes the training math. Only
rerun this on purpose (a deliberate change of the math), and say so in the commit.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as under pytest (tests/conftest.py): nothing from the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from memecap import train  # noqa: E402
from memecap.data.synthetic import make_synthetic_dataset  # noqa: E402
from memecap.publish.hub import stage_export  # noqa: E402
from tests.helpers import reset_accelerate, tiny_run_config  # noqa: E402

EXPORTS = HERE / "exports"
PINNED = HERE / "pinned.json"
STEPS = 6
RUNS = {
    "clipcap": ("demo", ["model.decoder.mode=lora", "model.encoder.trainable=false", "model.encoder.features=pooled",
                         "optim.lr=3e-3"]),
    "rudolph": ("rudolph_350m", ["model.rudolph.name=tiny-random", "model.rudolph.vqgan=tiny-random",
                                 "model.rudolph.tokenizer=tiny-random", "optim.lr=3e-3", "train.grad_accum=1",
                                 "optim.name=torch.optim.AdamW", "model.rudolph.gradient_checkpointing=false"]),
    "lstm": ("lstm_resnet50", ["model.encoder.name=tiny-random", "model.lstm.embed_dim=16", "model.lstm.hidden_dim=32",
                               "model.lstm.attention_dim=16", "optim.lr=1e-2"]),
}
COMMON = [f"train.max_steps={STEPS}", "train.eval_every=100", "eval.compare_constant=false",
          "generation.strategy=greedy", "generation.max_new_tokens=10", "optim.warmup_steps=1"]


def synthetic(root: Path) -> dict:
    return make_synthetic_dataset(root, n_train=48, n_val=13, image_size=32, seed=1)


def family_config(family: str, out: Path, data: dict, *extra: str):
    recipe, overrides = RUNS[family]
    return tiny_run_config(out, data, *COMMON, *overrides, *extra, recipe=recipe)


def committed_bases(family: str) -> list[str]:
    """Overrides that load the tiny bases bundled in the committed export instead of making new
    ones: YouTokenToMe's BPE training is not deterministic, so a new tiny RuDOLPH tokenizer may
    split the captions differently from the one the losses were pinned with."""
    if family != "rudolph":
        return []
    bases = EXPORTS / "rudolph" / "bases"
    return [f"model.rudolph.name={bases / 'rudolph'}", f"model.rudolph.vqgan={bases / 'vqgan'}",
            f"model.rudolph.tokenizer={bases / 'vqgan'}"]


def train_losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def sample_images(data: dict) -> list[Path]:
    return sorted((Path(data["val"]).parent / "images").glob("*.jpg"))[:3]


def main() -> None:
    from memecap import Captioner

    torch.set_num_threads(1)
    pinned = {"steps": STEPS, "losses": {}, "captions": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic(Path(tmp) / "synthetic")
        images = EXPORTS / "images"
        shutil.rmtree(EXPORTS, ignore_errors=True)
        images.mkdir(parents=True)
        for path in sample_images(data):
            shutil.copy(path, images / path.name)
        for family in RUNS:
            out = Path(tmp) / family
            try:
                train.main(family_config(family, out, data))
            finally:
                reset_accelerate()
            pinned["losses"][family] = train_losses(out)
            stage_export(out / "final", EXPORTS / family, repo_id=f"memecap-tests/{family}", license="apache-2.0",
                         log=lambda _: None)
            captioner = Captioner.from_pretrained(EXPORTS / family, device="cpu")
            pinned["captions"][family] = captioner(sorted(str(p) for p in images.glob("*.jpg")))
    PINNED.write_text(json.dumps(pinned, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    size = sum(p.stat().st_size for p in EXPORTS.rglob("*") if p.is_file())
    print(f"wrote {PINNED} and {EXPORTS} ({size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
