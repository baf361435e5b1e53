"""4-bit bases train, evaluate and train again with the same gradients on any x86-64 CPU, at
ruGPT-3 large's width (1536) as at the tiny test widths.

On an AVX-512 BF16 CPU, bitsandbytes repacks 4-bit weights for an inference kernel at the first
no-grad forward; without memecap's guard the tiny widths fail to repack and the real widths keep
the inference layout in training (an in-place error, no input gradient).
"""
from __future__ import annotations

import pytest
import torch

from memecap.config import TinyConfig, load_config
from memecap.models.clipcap.model import apply_decoder_mode, load_decoder
from memecap.models.tiny import save_tiny_gpt2

bnb = pytest.importorskip("bitsandbytes")  # an optional extra (memory); setup.sh installs it


def lora_grads(decoder, ids) -> dict:
    decoder.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same dropout masks
    decoder(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in decoder.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("width,heads", [(32, 2), (1536, 16)], ids=["tiny", "rugpt3large-width"])
def test_4bit_lora_trains_the_same_after_an_evaluation(tmp_path, width, heads, one_thread):
    folder = save_tiny_gpt2(tmp_path / "gpt2", TinyConfig(gpt_width=width, gpt_layers=1, gpt_heads=heads,
                                                          vocab_size=300),
                            ["кот сидит за столом", "подпись: мем про понедельник"] * 20)
    cfg = load_config("clipcap_qlora_large", [f"model.decoder.name={folder}", "model.decoder.lora.dropout=0"]).model
    decoder, tokenizer = load_decoder(cfg)
    decoder = apply_decoder_mode(decoder, cfg)
    layers = [m for m in decoder.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    ids = torch.tensor([tokenizer("подпись: кот сидит")["input_ids"]])
    decoder.train()
    before = lora_grads(decoder, ids)
    assert before and all("lora_" in n for n in before)
    decoder.eval()
    with torch.no_grad():
        decoder(input_ids=ids)  # where bitsandbytes would repack for its inference kernel
    decoder.train()
    after = lora_grads(decoder, ids)
    assert after.keys() == before.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name])


def test_a_qlora_clipcap_run_resumes_exactly(synthetic_data, tiny_ruclip_dir, tiny_gpt2_dir, tmp_path, one_thread):
    """4 steps straight == 2 steps, stop, resume, 2 more on a 4-bit base: the checkpoint's copy of the
    frozen weights' quantization state is kept as loaded, not refused as unexpected keys."""

    from memecap.train import main as train_main
    from tests.helpers import log_rows, reset_accelerate

    def run(out, *extra):
        cfg = load_config("clipcap_qlora_large", [
            f"data.train={synthetic_data['train']}", f"data.val={synthetic_data['val']}",
            f"model.encoder.name={tiny_ruclip_dir}", f"model.decoder.name={tiny_gpt2_dir}",
            f"train.output_dir={out}", f"cache.dir={tmp_path / 'cache'}", "optim.name=torch.optim.AdamW",
            "train.batch_size=4", "train.grad_accum=1", "train.save_every=2", "train.eval_every=2",
            "eval.compare_constant=false", "data.max_val_rows=4", "generation.max_new_tokens=4",
            "train.progress_bar=false", "train.trackers=[]", *extra])
        reset_accelerate()
        train_main(cfg)
        return [r["loss"] for r in log_rows(out)]

    straight = run(tmp_path / "straight", "train.max_steps=4", "train.log_every=1")
    run(tmp_path / "resumed", "train.max_steps=2", "train.log_every=1")
    resumed = run(tmp_path / "resumed", "train.max_steps=4", "train.log_every=1", "train.resume=auto")
    assert len(straight) == 4 and resumed == pytest.approx(straight, abs=1e-6)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
def test_4bit_lora_with_checkpointing_on_modern_decoders(tmp_path, family, one_thread):
    """QLoRA with gradient checkpointing on Llama-style decoders: their linear projections are
    quantized, adapters sit on the architecture's default targets, and training gives the same
    gradients before and after an evaluation."""
    from memecap.models.clipcap.architectures import LLAMA_TARGETS
    from memecap.models.tiny_causal_lm import save_tiny_causal_lm

    folder = save_tiny_causal_lm(tmp_path / family, family, TinyConfig(gpt_width=64, gpt_layers=2, gpt_heads=4,
                                                                      vocab_size=300),
                                 ["кот сидит за столом", "подпись: мем про понедельник"] * 20)
    cfg = load_config("clipcap_qlora_large", [f"model.decoder.name={folder}", "model.decoder.lora.dropout=0"]).model
    assert cfg.decoder.gradient_checkpointing
    decoder, tokenizer = load_decoder(cfg)
    decoder = apply_decoder_mode(decoder, cfg)
    assert decoder.base_model.model.is_activation_checkpointing
    quantized = {n.removesuffix(".base_layer").rsplit(".", 1)[-1] for n, m in decoder.named_modules()
                 if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized == set(LLAMA_TARGETS)  # every projection; the output head stays as loaded
    ids = torch.tensor([tokenizer("подпись: кот сидит", add_special_tokens=False)["input_ids"]])
    decoder.train()
    before = lora_grads(decoder, ids)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in before} == set(LLAMA_TARGETS)
    decoder.eval()
    with torch.no_grad():
        decoder(input_ids=ids)
    decoder.train()
    after = lora_grads(decoder, ids)
    assert after.keys() == before.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name])
