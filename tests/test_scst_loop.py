"""Self-critical reward fine-tuning as a stage objective, through the real loop: after a
cross-entropy stage, exact resume, the forced quote left out, two real processes, sampling under
mixed precision, 8/4-bit bases with LoRA. Under DeepSpeed: tests/test_deepspeed.py."""
from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch
from safetensors.torch import load_file

from memecap import train
from memecap.config import load_config, save_config
from memecap.models import build_model
from memecap.training.checkpoint_weights import FROZEN_FILE, frozen_fingerprints, frozen_parameters
from memecap.training.objectives import SelfCritical
from tests.helpers import checkpointed_run, log_rows, reset_accelerate, straight_and_resumed, tiny_run_config
from tests.launching import accelerate_launch, launch_failure, quiet_env

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

SCST = ("train.objective=scst", "scst.samples=3", "train.eval_every=100", "eval.compare_constant=false",
        "generation.max_new_tokens=8")


def test_a_self_critical_stage_after_cross_entropy_logs_its_reward(tmp_path, synthetic_data):
    stages = (f"stages=[{{name: ce, train: [{synthetic_data['train']}], val: {synthetic_data['val']}, max_steps: 4}}, "
              f"{{name: scst, train: [{synthetic_data['train']}], val: {synthetic_data['val']}, max_steps: 3, "
              f"objective: scst}}]")
    out = tmp_path / "run"
    cfg = tiny_run_config(out, {"train": "", "val": ""}, "scst.samples=3", "train.eval_every=100",
                          "eval.compare_constant=false", "generation.max_new_tokens=8", stages)
    summary = train.main(cfg)
    assert summary["optimizer_steps"] == 7
    records = log_rows(out)
    assert [("reward" in r) for r in records] == [False] * 4 + [True] * 3  # the reward is the scst stage's
    for r in records[4:]:
        assert set(r) >= {"cider", "quote", "length", "repetition"} and r["reward"] == pytest.approx(
            r["cider"] + r["quote"], abs=1e-9)  # default weights: cider 1, quote 1, the penalties 0


def test_a_self_critical_run_resumes_exactly(tmp_path, synthetic_data):
    """Sampling draws from the RNG a checkpoint restores: the resumed run samples the same captions."""
    common = (*SCST, "train.max_steps=5", "train.save_every=2", "train.keep_checkpoints=5", "optim.lr=3e-3")
    straight, resumed = straight_and_resumed(tmp_path, synthetic_data, common, step=2)
    a = {r["step"]: (r["loss"], r["reward"]) for r in log_rows(straight)}
    b = {r["step"]: (r["loss"], r["reward"]) for r in log_rows(resumed)}
    assert sorted(b) == [3, 4, 5]
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6), (step, a[step], b[step])


def test_the_copied_quote_is_left_out_of_the_log_probability(tmp_path, synthetic_data):
    cfg = tiny_run_config(tmp_path, synthetic_data, "generation.quote=copy", "model.ocr.enabled=true",
                          "model.ocr.engine=tesseract", "generation.max_new_tokens=40")  # no caption here cut
    net = build_model(cfg.model, work_dir=tmp_path, train_texts=["на картинке кот", "Подпись: \"привет мир\""])
    step = SelfCritical(accelerator=None, references=[["на картинке кот"]], settings=cfg.scst,
                        generation=cfg.generation, max_caption_tokens=48, synced_gpus=False)
    caption = 'на картинке кот. Подпись: "привет мир" и всё'
    ids = net.encode_caption(caption, 48)
    start, end = step._forced_span(net, caption)
    forced_text = net.tokenizer.decode(ids[start:end])
    assert forced_text.strip() == 'привет мир"'  # the quote and its closing mark; the opening mark was chosen
    assert step._forced_span(net, "на картинке кот") is None
    unchosen = step._unchosen(net, [caption, "на картинке кот"], [ids, net.encode_caption("на картинке кот", 48)])
    assert unchosen[0].nonzero().flatten().tolist() == list(range(start, end)) and not unchosen[1].any()


def test_the_end_token_of_a_caption_cut_at_the_length_limit_is_left_out(tmp_path, synthetic_data):
    cfg = tiny_run_config(tmp_path, synthetic_data, "generation.max_new_tokens=6")
    net = build_model(cfg.model, work_dir=tmp_path, train_texts=["на картинке кот сидит на столе у окна"])
    step = SelfCritical(accelerator=None, references=[["на картинке кот"]], settings=cfg.scst,
                        generation=cfg.generation, max_caption_tokens=48, synced_gpus=False)
    ended, cut = "кот", "на картинке кот сидит на столе у окна и смотрит на улицу"
    assert len(net.encode_caption(ended, 48)) - 1 < 6 <= len(net.encode_caption(cut, 48)) - 1
    ids = [net.encode_caption(ended, 48), net.encode_caption(cut, 48)]
    unchosen = step._unchosen(net, [ended, cut], ids)
    assert not unchosen[0].any()  # it ended before the limit: its end token was sampled
    assert unchosen[1].nonzero().flatten().tolist() == [len(ids[1]) - 1]  # only the end token, not the words


def test_two_processes_train_self_critically_in_step(tmp_path, synthetic_data):
    out = tmp_path / "run"
    cfg = tiny_run_config(out, synthetic_data, *SCST, "train.max_steps=2")
    recipe = tmp_path / "run.yaml"
    save_config(cfg, recipe)
    proc = accelerate_launch("cpu_ddp.yaml", ["-m", "memecap.train", str(recipe)],
                             {**quiet_env(), "ACCELERATE_USE_CPU": "1"})
    assert proc.returncode == 0, launch_failure(proc)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["replicas_in_sync"] is True
    assert all("reward" in r for r in log_rows(out))


def test_sampling_runs_in_the_runs_mixed_precision(tmp_path, synthetic_data, monkeypatch):
    """Under autocast, as evaluation generates (the unwrapped model's generate is not wrapped by
    Accelerate as the training forward is): outside it a 16-bit run samples in fp32, slower on a GPU
    and not in the precision the sampled captions are then scored in."""
    from memecap.models.clipcap.model import ClipCap

    autocast_by_strategy = defaultdict(set)
    real_generate = ClipCap.generate

    def observed_generate(self, batch, generation, synced_gpus=False):
        autocast_by_strategy[generation.strategy].add(torch.is_autocast_enabled("cpu"))
        return real_generate(self, batch, generation, synced_gpus=synced_gpus)

    monkeypatch.setattr(ClipCap, "generate", observed_generate)
    cfg = tiny_run_config(tmp_path / "run", synthetic_data, *SCST, "train.max_steps=1", "scst.baseline=greedy",
                          "train.mixed_precision=bf16", "model.encoder.trainable=false",
                          "model.encoder.features=pooled")
    assert train.main(cfg)["optimizer_steps"] == 1
    assert dict(autocast_by_strategy) == {"sample": {True}, "greedy": {True}}


def test_scst_settings_are_checked_before_any_work():
    from memecap.config import ConfigError

    with pytest.raises(ConfigError, match="scst.samples"):
        load_config("demo", ["train.objective=scst", "scst.samples=1"])
    with pytest.raises(ConfigError, match="train.objective"):
        load_config("demo", ["train.objective=rl"])
    with pytest.raises(ConfigError, match="data.streaming=false"):
        load_config("demo", ["train.objective=scst", "data.streaming=true", "data.train=x.jsonl"])


def test_the_kl_estimate_is_zero_where_policy_and_reference_agree_and_pulls_towards_the_reference():
    from memecap.training.scst import kl_to_reference

    reference = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))
    mask = torch.tensor([[True, True, False]])
    assert kl_to_reference(reference.clone(), reference, mask).item() == pytest.approx(0.0, abs=1e-12)
    policy = (reference + torch.tensor([[0.3, -0.2, 5.0]])).requires_grad_()
    kl = kl_to_reference(policy, reference, mask)
    assert kl.item() > 0
    kl.sum().backward()
    # Descending the penalty moves each chosen token's log-probability back towards the reference's;
    # the unchosen position (masked) gets no gradient however far it is.
    assert policy.grad[0, 0] > 0 and policy.grad[0, 1] < 0 and policy.grad[0, 2] == 0


def test_the_kl_reference_is_the_starting_weights_kept_across_a_resume(tmp_path, synthetic_data):
    from memecap.training.objectives import KL_REFERENCE_FILE

    first = tmp_path / "ce"
    checkpointed_run(first, synthetic_data, "train.max_steps=2", "optim.lr=3e-3")
    reset_accelerate()
    common = (*SCST, "scst.kl=0.5", f"train.init_from={first}", "train.max_steps=4", "train.save_every=2",
              "train.keep_checkpoints=5", "optim.lr=3e-3")
    straight, resumed = straight_and_resumed(tmp_path, synthetic_data, common, step=2)
    start = load_file(str(first / "checkpoints" / "step_0000002" / "model.safetensors"))
    for step in (2, 4):
        kept = load_file(str(straight / "checkpoints" / f"step_{step:07d}" / KL_REFERENCE_FILE))
        assert kept and all(torch.equal(t, start[name]) for name, t in kept.items())
    a = {r["step"]: (r["loss"], r["kl"]) for r in log_rows(straight)}
    b = {r["step"]: (r["loss"], r["kl"]) for r in log_rows(resumed)}
    assert sorted(b) == [3, 4] and all(b[s] == pytest.approx(a[s], abs=1e-6) for s in b)
    assert all(kl >= 0 for _, kl in a.values()) and a[4][1] > 0


def test_a_negative_kl_weight_is_refused_before_any_work():
    from memecap.config import ConfigError

    with pytest.raises(ConfigError, match="scst.kl"):
        load_config("demo", ["train.objective=scst", "scst.kl=-1"])


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_self_critical_qlora(bits, tmp_path, synthetic_data, tiny_ruclip_dir, tiny_gpt2_dir):
    """scst on a quantized base with LoRA, gradient checkpointing and AdamW8bit. The untrained model's
    samples differ in length and repetition (weighed in here), so the advantages are not zero."""
    out = tmp_path / "run"
    cfg = tiny_run_config(out, synthetic_data, *SCST, "train.max_steps=3", "train.save_every=3",
                          "scst.length=1.0", "scst.max_words=2", "scst.repetition=1.0", "optim.weight_decay=0",
                          "model.encoder.kind=ruclip", f"model.encoder.name={tiny_ruclip_dir}",
                          "model.encoder.trainable=false", "model.encoder.features=pooled",
                          f"model.decoder.name={tiny_gpt2_dir}", "model.decoder.mode=lora",
                          f"model.decoder.quantization={bits}", "model.decoder.gradient_checkpointing=true",
                          "optim.name=bitsandbytes.optim.AdamW8bit")
    assert train.main(cfg)["optimizer_steps"] == 3
    rows = log_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["reward"] == pytest.approx(r["cider"] + r["quote"] + r["length"] + r["repetition"], abs=1e-9)
               and r["loss"] != 0 for r in rows), rows
    # LoRA's B starts at zero and nothing decays it: a non-zero B is the policy gradient's doing.
    adapter = load_file(out / "final" / "adapter" / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b)
    # The base stays as loaded: the last checkpoint's fingerprints of the frozen weights (the quantized
    # ones included) are those of the same base quantized afresh.
    kept = json.loads((out / "checkpoints" / "step_0000003" / FROZEN_FILE).read_text())
    fresh = build_model(cfg.model, work_dir=tmp_path / "fresh")
    trained = {id(p) for p in fresh.parameters() if p.requires_grad}
    assert any(p.dtype in (torch.uint8, torch.int8) for p in frozen_parameters(fresh, trained).values())
    assert kept == frozen_fingerprints(fresh, trained)


@pytest.mark.parametrize("dropout", [False, True])
def test_the_policy_scores_its_samples_without_dropout_unless_asked(dropout, tmp_path, synthetic_data):
    """At the first step the policy is the KL reference: scored as it sampled (no dropout), the KL
    estimate is 0; with `scst.dropout` its noise alone makes it positive."""
    first = tmp_path / "ce"
    lora = ("model.decoder.mode=lora", "model.decoder.lora.dropout=0.5")
    checkpointed_run(first, synthetic_data, *lora, "train.max_steps=2", "optim.lr=3e-3")
    reset_accelerate()
    out = tmp_path / "scst"
    cfg = tiny_run_config(out, synthetic_data, *SCST, *lora, "scst.kl=0.5", f"scst.dropout={str(dropout).lower()}",
                          f"train.init_from={first}", "train.max_steps=1")
    assert train.main(cfg)["optimizer_steps"] == 1
    (row,) = [r for r in log_rows(out) if r["step"] == 1]
    if dropout:
        assert row["kl"] > 1e-3
    else:
        assert row["kl"] == pytest.approx(0.0, abs=1e-6)


def test_without_dropout_leaves_the_model_training_and_restores_each_probability():
    from memecap.training.as_sampled import as_sampled

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Dropout1d(0.2),
                                torch.nn.Linear(8, 2)).train()
    x = torch.randn(4, 8, 8)
    with as_sampled(model):
        assert model.training and all(m.training for m in model)
        assert torch.equal(model(x), model.eval()(x))
        model.train()
    assert [m.p for m in model if hasattr(m, "p")] == [0.5, 0.2]
    assert not torch.equal(model(x), model(x))  # dropping again


def test_as_sampled_also_stills_a_recurrent_layers_own_dropout_and_uses_running_statistics():
    """nn.LSTM drops between its layers from an attribute, not a Dropout module (the LSTM baseline's)."""
    from memecap.training.as_sampled import as_sampled

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(4, 8, num_layers=2, dropout=0.5, batch_first=True).train()
    x = torch.randn(3, 5, 4)
    with as_sampled(lstm):
        assert lstm.training and torch.equal(lstm(x)[0], lstm(x)[0])
    assert lstm.dropout == 0.5
    assert not torch.equal(lstm(x)[0], lstm(x)[0])

    norm = torch.nn.BatchNorm1d(4).train()
    with torch.no_grad():
        norm.running_mean.fill_(1.0)
    y = torch.randn(6, 4) * 3
    expected = norm.eval()(y)
    norm.train()
    with as_sampled(norm):
        assert torch.equal(norm(y), expected)  # the running statistics, as sampling used them
        assert norm.running_mean.eq(1.0).all()  # and not updated
    assert norm.training
    norm(y)
    assert not norm.running_mean.eq(1.0).all()  # training as before afterwards


def test_eval_mode_inside_as_sampled_gives_back_each_modules_own_mode():
    """scst samples in eval mode within the step: `train(True)` afterwards would put the batch norm
    that `as_sampled` keeps in eval mode back to batch statistics for the policy's forward."""
    from memecap.training.as_sampled import as_sampled, eval_mode

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Dropout(0.5)).train()
    with as_sampled(model):
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
        assert [m.training for m in model] == [True, False, True]
    assert all(m.training for m in model.modules())
