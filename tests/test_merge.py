"""`memecap export --merge`: a LoRA export of each family that has one (ClipCap, RuDOLPH, a VLM)
merged into its base, read back by memecap with the same loss and captions, the adapter's
change really in the weights, a 4-bit (QLoRA) run merged into its unquantized base, and the
VLM's model folder loaded by plain transformers with no memecap importable."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from memecap.config import GenerationConfig, load_config
from memecap.data.synthetic import sample_images
from memecap.merging import merge_export
from memecap.models import build_model, load_model
from tests.helpers import nudge_trained_parts

ROOT = Path(__file__).resolve().parent.parent
CLIPCAP_EXPORT = ROOT / "tests" / "data" / "exports" / "clipcap"
CAPTIONS = ['на картинке красный круг. подпись: "когда понедельник"', "на картинке синий квадрат на белом фоне.",
            'на картинке зелёный треугольник. подпись: "я всё объясню"']

pytestmark = pytest.mark.usefixtures("one_thread")


def loss_on(model, images, captions=CAPTIONS) -> float:
    """The model's mean caption-token loss on fixed images and captions (the protocol's forward)."""
    inputs = model.image_inputs(images, cache_dir=None, device="cpu", progress=False)
    batch = model.collate([{"image": inputs[i], "input_ids": model.encode_caption(c, 48)}
                           for i, c in enumerate(captions)])
    with torch.no_grad():
        return model(batch)["loss"].item()


def exported(model, folder: Path) -> Path:
    torch.manual_seed(1)
    nudge_trained_parts(model)  # a fresh adapter adds nothing (B = 0): this one changes the weights
    model.save_pretrained(folder, generation=GenerationConfig(strategy="greedy", max_new_tokens=10))
    return folder


@pytest.fixture(scope="module")
def clipcap_export(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("clipcap_lora")
    torch.manual_seed(0)
    cfg = load_config("demo", ["model.decoder.mode=lora"]).model
    return exported(build_model(cfg, work_dir=work, train_texts=CAPTIONS), work / "export")


@pytest.fixture(scope="module")
def rudolph_export(tiny_rudolph, tmp_path_factory) -> Path:
    from tests.helpers import rudolph_overrides

    work = tmp_path_factory.mktemp("rudolph_lora")
    cfg = load_config("rudolph_350m", [*rudolph_overrides(tiny_rudolph), "model.rudolph.mode=lora",
                                       "model.rudolph.lora.r=4"]).model
    return exported(build_model(cfg, work_dir=work), work / "export")


@pytest.fixture(scope="module")
def vlm_export(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("vlm_lora")
    torch.manual_seed(0)
    cfg = load_config("vlm_tiny", ["model.vlm.mode=lora", "model.vlm.tiny_architecture=qwen2_vl"]).model
    return exported(build_model(cfg, work_dir=work, train_texts=CAPTIONS), work / "export")


def merged_weights(out: Path) -> dict:
    return {name: tensor for f in out.rglob("*.safetensors") if "adapter" not in f.parts
            for name, tensor in load_file(str(f)).items()}


@pytest.mark.parametrize("family", ["clipcap", "rudolph", "vlm"])
def test_a_merged_export_reads_back_with_the_same_loss_and_captions(family, request, tmp_path):
    source = request.getfixturevalue(f"{family}_export")
    report = merge_export(source, tmp_path / "merged", dtype="float32", sample=4, device="cpu")
    assert report.sample == 4 and report.differing == []  # greedy captions equal, before and after
    out = tmp_path / "merged"
    meta = yaml.safe_load((out / "memecap.yaml").read_text(encoding="utf-8"))
    assert not any("adapter" in f for f in meta["files"])  # one whole model, no adapter to apply
    assert meta["merged_from"]["dtype"] == "float32" and "merged" in meta["architecture"][-1]
    images = sample_images(3, image_size=64, seed=3)
    before, after = load_model(source), load_model(out)
    with_adapter = loss_on(before, images)
    assert loss_on(after, images) == pytest.approx(with_adapter, rel=1e-5, abs=1e-5)
    # The adapter's change is in the merged weights: without it the loss is another one.
    assert abs(loss_on(_without_adapter(before), images) - with_adapter) > 1e-4


def _without_adapter(model):
    """The same model with its PEFT adapter switched off (the base alone)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.enable_adapters(False)
    return model


def test_a_4bit_run_is_merged_into_its_unquantized_base_not_the_dequantized_one(tmp_path):
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = load_config("demo", ["model.decoder.mode=lora", "model.decoder.quantization=4bit"]).model
    torch.manual_seed(0)
    source = exported(build_model(cfg, work_dir=tmp_path / "run", train_texts=CAPTIONS), tmp_path / "export")
    merge_export(source, tmp_path / "merged", dtype="float32", sample=2, device="cpu")
    merged = load_file(str(tmp_path / "merged" / "decoder" / "model.safetensors"))
    base_dir = Path(yaml.safe_load((source / "memecap.yaml").read_text())["model"]["decoder"]["name"])
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                                         source / "adapter").merge_and_unload().state_dict()
    weight = next(n for n in merged if n.endswith("attn.c_attn.weight"))
    assert merged[weight].dtype == torch.float32
    torch.testing.assert_close(merged[weight], expected[weight])  # the fp32 base + the adapter's delta
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).state_dict()[weight]
    assert not torch.allclose(merged[weight], base)  # the delta is there
    meta = yaml.safe_load((tmp_path / "merged" / "memecap.yaml").read_text(encoding="utf-8"))
    assert meta["model"]["decoder"]["quantization"] == "none" and "4bit quantized" in meta["architecture"][-1]


def test_a_bf16_merge_writes_16_bit_weights_half_the_size(tmp_path):
    merge_export(CLIPCAP_EXPORT, tmp_path / "fp32", dtype="float32", sample=1, device="cpu")
    merge_export(CLIPCAP_EXPORT, tmp_path / "bf16", dtype="bfloat16", sample=1, device="cpu")
    full, half = (load_file(str(tmp_path / d / "decoder" / "model.safetensors")) for d in ("fp32", "bf16"))
    assert {t.dtype for t in half.values()} == {torch.bfloat16} and {t.dtype for t in full.values()} == {torch.float32}
    sizes = [(tmp_path / d / "decoder" / "model.safetensors").stat().st_size for d in ("fp32", "bf16")]
    assert sizes[1] < 0.6 * sizes[0]


def test_the_merged_vlm_folder_loads_with_plain_transformers_and_no_memecap(vlm_export, tmp_path):
    merge_export(vlm_export, tmp_path / "merged", dtype="float32", sample=1, device="cpu")
    model_dir = tmp_path / "merged" / "model"
    script = f"""
import sys
sys.modules["memecap"] = None  # any import of memecap fails
import torch
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
model = AutoModelForImageTextToText.from_pretrained({str(model_dir)!r})
AutoTokenizer.from_pretrained({str(model_dir)!r}); AutoImageProcessor.from_pretrained({str(model_dir)!r})
save_file({{k: v.contiguous() for k, v in model.state_dict().items()}}, {str(tmp_path / "plain.safetensors")!r})
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    plain = load_file(str(tmp_path / "plain.safetensors"))
    ours = load_model(tmp_path / "merged").model.state_dict()
    assert set(plain) == set(ours)
    assert all(torch.equal(plain[k], ours[k].to(plain[k].dtype)) for k in plain)
    assert (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file()


def test_the_command_prints_the_comparison_and_refuses_what_it_cannot_do(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

    def memecap(*args):
        return subprocess.run([sys.executable, "-m", "memecap", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    done = memecap("export", str(CLIPCAP_EXPORT), "--merge", "--out", str(tmp_path / "m"), "--dtype", "fp32",
                   "--images", str(ROOT / "tests" / "data" / "exports" / "images"))
    assert done.returncode == 0, done.stderr
    assert "greedy captions of 3 sample images: 3 equal, 0 differ" in done.stdout
    assert "Loading weights" not in done.stderr + done.stdout  # no third-party bars
    again = memecap("export", str(CLIPCAP_EXPORT), "--merge", "--out", str(tmp_path / "m"))
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
    lstm = memecap("export", str(ROOT / "tests" / "data" / "exports" / "lstm"), "--merge", "--out", str(tmp_path / "l"))
    assert lstm.returncode == 2 and "has no adapter to merge" in lstm.stderr and not (tmp_path / "l").exists()
