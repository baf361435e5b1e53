"""Memory-saving modes on tiny models, through the real builders: 8-bit optimizers, 8/4-bit bases
with LoRA (QLoRA), gradient checkpointing. Each checks that the loss falls and that exactly the
intended parameters change."""
from __future__ import annotations

import pytest
import torch

from memecap.config import ConfigError, OptimConfig
from memecap.models import build_model
from memecap.training.optim import build_optimizer
from tests.helpers import clipcap_batch, recipe_with_tiny_bases


def train_steps(model, batch, optimizer, steps=8):
    losses = []
    for _ in range(steps):
        loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def snapshot(model):
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


def changed(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach().float())}


@pytest.mark.parametrize("optimizer", ["bitsandbytes.optim.AdamW8bit", "bitsandbytes.optim.PagedAdamW8bit"])
def test_8bit_optimizer_trains_the_full_decoder(optimizer, tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    model = build_model(recipe_with_tiny_bases("clipcap_mlp_finetune", tiny_ruclip_dir, tiny_gpt2_dir).model,
                        work_dir=tmp_path)
    opt = build_optimizer(OptimConfig(name=optimizer, lr=3e-3), model.trainable_parameters())
    assert type(opt).__module__.startswith("bitsandbytes")
    before = snapshot(model)
    losses = train_steps(model, clipcap_batch(model, examples), opt)
    assert losses[-1] < losses[0] - 0.5, losses
    assert changed(before, model) == {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_lora_on_quantized_base(bits, tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    import bitsandbytes as bnb

    cfg = recipe_with_tiny_bases("clipcap_lora", tiny_ruclip_dir, tiny_gpt2_dir, f"model.decoder.quantization={bits}")
    model = build_model(cfg.model, work_dir=tmp_path)
    quantized = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    assert any(isinstance(m, quantized) for m in model.decoder.modules()), "the base was not quantized"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("mapper.") or "lora_" in n for n in trainable)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    before = snapshot(model)
    losses = train_steps(model, clipcap_batch(model, examples), opt, steps=20)
    assert losses[-1] < losses[0] - 0.2, losses
    assert changed(before, model) == trainable  # the quantized base stays as loaded

    # The same run on the unquantized base follows nearly the same curve: quantization keeps the math.
    torch.manual_seed(0)
    plain = build_model(recipe_with_tiny_bases("clipcap_lora", tiny_ruclip_dir, tiny_gpt2_dir).model, work_dir=tmp_path)
    plain.mapper.load_state_dict({k[len("mapper."):]: v for k, v in before.items() if k.startswith("mapper.")})
    reference = train_steps(plain, clipcap_batch(plain, examples),
                            torch.optim.AdamW(plain.trainable_parameters(), lr=3e-3), steps=20)
    assert max(abs(a - b) for a, b in zip(losses, reference)) < 0.1, (losses, reference)


def test_quantized_full_decoder_is_rejected():
    from memecap.config import load_config

    with pytest.raises(ConfigError, match="quantization"):
        load_config("clipcap_mlp_finetune", ["model.decoder.quantization=4bit"])


def test_gradient_checkpointing_gives_the_same_gradients_and_recomputes(tiny_ruclip_dir, tiny_gpt2_dir, examples,
                                                                      tmp_path):
    grads, forward_calls = {}, {}
    for ckpt in (False, True):
        cfg = recipe_with_tiny_bases("clipcap_mlp_finetune", tiny_ruclip_dir, tiny_gpt2_dir,
                                     f"model.decoder.gradient_checkpointing={str(ckpt).lower()}")
        torch.manual_seed(0)
        model = build_model(cfg.model, work_dir=tmp_path).train()  # checkpointing acts in training mode only
        for module in model.modules():  # ... and without dropout both runs are deterministic
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        # A leaf layer of the first block: its forward runs again when backward recomputes the block.
        first_layer = model.decoder.transformer.h[0].attn.c_attn
        calls = []
        first_layer.register_forward_hook(lambda *_: calls.append(1))
        model(clipcap_batch(model, examples))["loss"].backward()
        grads[ckpt] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        forward_calls[ckpt] = len(calls)
    assert forward_calls == {False: 1, True: 2}  # the block ran again in backward
    assert grads[False].keys() == grads[True].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-6)


def test_loop_runs_qlora_with_8bit_optimizer_and_checkpointing(tmp_path, synthetic_data, tiny_ruclip_dir,
                                                               tiny_gpt2_dir):
    """The modes combine through the one loop: 4-bit base + LoRA + AdamW8bit + gradient checkpointing."""
    from memecap import train
    from memecap.models import load_model
    from tests.helpers import reset_accelerate, tiny_run_config

    out = tmp_path / "run"
    cfg = tiny_run_config(out, synthetic_data, "train.max_steps=4", "eval.compare_constant=false",
                          "model.encoder.kind=ruclip", f"model.encoder.name={tiny_ruclip_dir}",
                          "model.encoder.trainable=false", "model.encoder.features=pooled",
                          f"model.decoder.name={tiny_gpt2_dir}", "model.decoder.mode=lora",
                          "model.decoder.quantization=4bit", "model.decoder.gradient_checkpointing=true",
                          "optim.name=bitsandbytes.optim.AdamW8bit")
    try:
        summary = train.main(cfg)
    finally:
        reset_accelerate()
    assert summary["optimizer_steps"] == 4
    files = {p.relative_to(out / "final").as_posix() for p in (out / "final").rglob("*") if p.is_file()}
    assert "adapter/adapter_model.safetensors" in files and not any(f.startswith("decoder/") for f in files)
    reloaded = load_model(out / "final")
    assert any("Linear4bit" in type(m).__name__ for m in reloaded.decoder.modules())  # base re-quantized on load


def test_bf16_frozen_base_under_lora(tiny_ruclip_dir, tiny_gpt2_dir, examples, tmp_path):
    """Frozen weights stored in bf16 (half the memory) while the LoRA adapter and mapper train in fp32."""
    cfg = recipe_with_tiny_bases("clipcap_lora", tiny_ruclip_dir, tiny_gpt2_dir,
                                 "model.decoder.dtype=bfloat16", "model.encoder.dtype=bfloat16")
    model = build_model(cfg.model, work_dir=tmp_path)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(dtypes[n] == torch.float32 for n in trainable)
    assert {dtypes[n] for n in dtypes if n.startswith("decoder.") and n not in trainable} == {torch.bfloat16}
    assert next(model.frozen_encoder.module.parameters()).dtype == torch.bfloat16
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    before = snapshot(model)
    losses = train_steps(model, clipcap_batch(model, examples), opt, steps=12)
    assert losses[-1] < losses[0] - 0.2, losses
    assert changed(before, model) == trainable


@pytest.mark.parametrize("override", ["model.decoder.dtype=bfloat16", "model.encoder.dtype=float16"])
def test_16bit_trained_weights_are_rejected(override):
    from memecap.config import load_config

    with pytest.raises(ConfigError, match="float32"):
        load_config("clipcap_mlp_finetune", [override, "model.encoder.trainable=true"])


def test_auto_dtype_is_fp32_on_cpu_and_for_trained_weights():
    from memecap.models.dtypes import weights_dtype

    assert weights_dtype("auto", trains=False, sixteen_bit=False) == torch.float32
    assert weights_dtype("auto", trains=False, sixteen_bit=True) == torch.bfloat16
    assert weights_dtype("auto", trains=True, sixteen_bit=True) == torch.float32
    assert weights_dtype("float16", trains=False) == torch.float16
