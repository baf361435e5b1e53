"""Every shipped recipe loads and binds; bad keys and values fail with the key's name."""
from __future__ import annotations

import pytest

from memecap.config import ConfigError, list_recipes, load_config, load_saved_config, save_config

REQUIRED_RECIPES = {"demo", "clipcap_mlp_frozen", "clipcap_transformer_frozen", "clipcap_mlp_finetune", "clipcap_lora",
                    "rudolph_350m", "rudolph_1.3b", "rudolph_2.7b"}


def test_required_recipes_ship():
    assert REQUIRED_RECIPES <= set(list_recipes())


@pytest.mark.parametrize("recipe", list_recipes())
def test_every_recipe_loads(recipe):
    cfg = load_config(recipe)
    expected = {"ocr_template": "ocr_template"}.get(recipe, "rudolph" if recipe.startswith("rudolph") else
                                                    "lstm" if recipe.startswith("lstm") else
                                                    "vlm" if recipe.startswith("vlm") else "clipcap")
    assert cfg.model.family == expected
    assert cfg.train.output_dir


def test_real_recipes_name_the_real_hub_models():
    cfg = load_config("clipcap_mlp_frozen")
    assert (cfg.model.encoder.kind, cfg.model.encoder.name) == ("ruclip", "ai-forever/ruclip-vit-base-patch32-384")
    assert cfg.model.decoder.name == "ai-forever/rugpt3small_based_on_gpt2"
    assert (cfg.model.mapper.type, cfg.model.decoder.mode) == ("mlp", "frozen")
    assert load_config("clipcap_transformer_frozen").model.mapper.type == "transformer"
    assert load_config("clipcap_mlp_finetune").model.decoder.mode == "full"
    lora = load_config("clipcap_lora").model.decoder
    assert lora.mode == "lora" and lora.lora.r == 16


def test_overrides_are_typed_and_nested():
    cfg = load_config("clipcap_lora", ["optim.lr=3e-4", "model.decoder.lora.r=4", "train.trackers=[]",
                                       "train.max_steps=null", "model.decoder.lora.target_modules=[c_attn]"])
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string; it must still be a float
    assert cfg.model.decoder.lora.r == 4
    assert cfg.train.trackers == [] and cfg.train.max_steps is None
    assert cfg.model.decoder.lora.target_modules == ["c_attn"]


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "optim.lrr"),
    ("model.decoder.moed=lora", "model.decoder.moed"),
    ("train.batch_size=big", "train.batch_size"),
    ("train.batch_size=1.5", "train.batch_size"),
    ("model.decoder.mode=half", "model.decoder.mode"),
    ("data.on_bad_row=ignore", "data.on_bad_row"),
    ("train.best_metric=cider_d", "train.best_metric"),
    ("generation.strategy=beam_search", "generation.strategy"),
    ("notasection.x=1", "notasection"),
    ("train.epochs", "key=value"),
    ("model.ocr.enable=true", "model.ocr.enable"),
    ("model.ocr.template=no_slot", "model.ocr.template"),
    ("model.ocr.template='{text} Описание:'", "model.ocr.template"),
    ("model.ocr.min_confidence=150", "model.ocr.min_confidence"),
    ("model.ocr.max_tokens=0", "model.ocr.max_tokens"),
    ("model.ocr.languages=[]", "model.ocr.languages"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config("demo", [override])


def test_ocr_on_an_lstm_baseline_is_an_error_not_a_silent_no_op():
    with pytest.raises(ConfigError, match=r"model\.ocr\.enabled: not read by model\.family=lstm.*"
                                          r"the LSTM baselines do not read OCR text"):
        load_config("lstm_resnet50", ["model.ocr.enabled=true"])


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="clipcap_lora"):
        load_config("clipcap_nonexistent")


def test_yaml_file_recipe_with_extends(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("extends: clipcap_lora\noptim:\n  lr: 1.0e-5\n")
    cfg = load_config(str(recipe))
    assert cfg.model.decoder.mode == "lora" and cfg.optim.lr == pytest.approx(1e-5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  decoder:\n    lora_rank: 3\n")
    with pytest.raises(ConfigError, match="model.decoder.lora_rank"):
        load_config(str(bad))


def test_saved_config_round_trips(tmp_path):
    cfg = load_config("clipcap_transformer_frozen", ["train.seed=7"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_saved_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("objective, in_stage, expected", [("scst", False, True), ("scst", True, True),
                                                              ("ce", False, False)])
def test_a_saved_scst_run_from_before_the_dropout_setting_reads_as_with_dropout(tmp_path, objective, in_stage,
                                                                                  expected):
    """Such a run scored its samples with dropout: resuming it with today's default is a change, refused."""
    import yaml

    from memecap.config import to_dict
    from memecap.training.checkpoint import resume_changes

    if in_stage:
        stage = f"stages=[{{name: reward, train: [a.tsv], val: b.tsv, objective: {objective}}}]"
        overrides = ["data.train=", "data.val=", stage]
    else:
        overrides = [f"train.objective={objective}"]
    now = load_config("demo", overrides)
    values = to_dict(now)
    del values["scst"]["dropout"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(values, allow_unicode=True), encoding="utf-8")
    saved = load_saved_config(tmp_path / "config.yaml")
    assert saved.scst.dropout is expected
    exact, _ = resume_changes(saved, now)
    assert exact == (["scst.dropout: True -> False"] if expected else [])


def test_rudolph_recipes_name_the_real_hub_models_and_weight_the_caption():
    cfg = load_config("rudolph_350m")
    r = cfg.model.rudolph
    assert (r.name, r.vqgan, r.tokenizer) == ("ai-forever/RUDOLPH-350M", "ai-forever/rudalle-utils",
                                              "ai-forever/rudalle-utils")
    assert r.loss_weights.right_text > 5 * max(r.loss_weights.left_text, r.loss_weights.image)
    assert load_config("rudolph_1.3b").model.rudolph.name == "ai-forever/RUDOLPH-1.3B"
    assert load_config("rudolph_2.7b").model.rudolph.mode == "lora"
    with pytest.raises(ConfigError, match="beam"):
        load_config("rudolph_350m", ["data.train=a.tsv", "data.val=b.tsv", "generation.strategy=beam"])
    with pytest.raises(ConfigError, match="data.long_captions"):
        load_config("rudolph_350m", ["data.long_captions=drop"])
    with pytest.raises(ConfigError, match="base_dtype"):
        load_config("rudolph_350m", ["model.rudolph.base_dtype=bfloat16"])  # mode full trains fp32 weights


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="data.val"):
        load_config("demo", ["data.train=a.tsv", "data.val="])
    with pytest.raises(ConfigError, match="num_return_sequences"):
        load_config("demo", ["generation.strategy=greedy", "generation.num_return_sequences=3"])


@pytest.mark.parametrize("override,key", [
    ("train.max_steps=0", "train.max_steps"), ("train.max_steps=-5", "train.max_steps"),
    ("train.epochs=0", "train.epochs"), ("train.log_every=0", "train.log_every"),
    ("train.eval_every=0", "train.eval_every"), ("train.save_every=-1", "train.save_every"),
    ("generation.num_beams=0", "generation.num_beams"), ("generation.max_new_tokens=0", "generation.max_new_tokens"),
    ("generation.top_p=0", "generation.top_p"), ("generation.temperature=0", "generation.temperature"),
    ("optim.lr=.nan", "optim.lr"), ("optim.lr=.inf", "optim.lr"), ("optim.lr=nan", "optim.lr"),
    ("optim.warmup_steps=-1", "optim.warmup_steps"), ("optim.betas=[0.9]", "optim.betas"),
    ("optim.max_grad_norm=0", "optim.max_grad_norm"), ("eval.batch_size=0", "eval.batch_size"),
    ("model.decoder.lora.r=0", "model.decoder.lora.r"), ("model.mapper.dropout=1.5", "model.mapper.dropout"),
    ("data.num_workers=-1", "data.num_workers"), ("train.max_bad_steps=-1", "train.max_bad_steps"),
    ("model.tiny.gpt_heads=3", "model.tiny.gpt_width"),
])
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("demo", [override])


def test_overwrite_and_resume_exclude_each_other():
    with pytest.raises(ConfigError, match=r"train\.overwrite=true.*train\.resume"):
        load_config("demo", ["train.overwrite=true", "train.resume=auto"])


def test_invalid_yaml_recipe_names_file_line_and_column(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("extends: demo\ntrain:\n  epochs: 2\n   batch_size: [1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml, line 4, column \d+: invalid YAML"):
        load_config(str(recipe))


def test_extends_must_name_one_recipe(tmp_path):
    recipe = tmp_path / "list.yaml"
    recipe.write_text("extends: [demo]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"extends=\['demo'\]: name one recipe"):
        load_config(str(recipe))


def test_config_command_reports_a_bad_recipe_without_a_traceback(tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train: {epochs: 2\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "memecap", "config", str(recipe)], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid YAML" in proc.stderr and "Traceback" not in proc.stderr


def test_extends_cycle_through_dotdot_names_the_recipe(tmp_path):
    # `../sub/a.yaml` inside sub/a.yaml is itself under a longer name each time round.
    (tmp_path / "sub").mkdir()
    recipe = tmp_path / "sub" / "a.yaml"
    recipe.write_text("extends: ../sub/a.yaml\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"a\.yaml extends itself"):
        load_config(str(recipe))


@pytest.mark.parametrize("override, key", [
    ("train.seed=-1", "train.seed"), ("train.seed=4294967296", "train.seed"),
    ("data.synthetic.seed=-5", "data.synthetic.seed"),
    ("train.output_dir=", "train.output_dir"), ("train.output_dir='  '", "train.output_dir"),
    ("train.trackers=[tensorboard, [wandb]]", r"train.trackers\[1\]"), ("train.trackers=[3]", r"train.trackers\[0\]"),
    ("model.ocr.cleaning=[[handles]]", r"model.ocr.cleaning\[0\]"), ("optim.betas=[[0.9], 0.99]", r"optim.betas\[0\]"),
    ("model.decoder.trainable=[[h]]", r"model.decoder.trainable\[0\]"),
])
def test_settings_out_of_range_or_of_the_wrong_item_type_name_their_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}"):
        load_config("demo", [override])


def test_the_vision_tower_targets_are_type_checked():
    with pytest.raises(ConfigError, match=r"^model.vlm.vision_target_modules\[1\]"):
        load_config("vlm_tiny", ["model.vlm.vision_target_modules=[qkv, [proj]]"])


def test_a_yaml_bomb_in_a_list_setting_is_refused_at_once(tmp_path):
    # 2**25 leaves behind a few aliases: copying it (a saved config) would run for minutes.
    anchors = ", ".join(f"&a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 25))
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(f"extends: demo\ntrain:\n  trackers: [&a0 [x, x], {anchors}]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^train.trackers\[0\]=list: expected a string"):
        load_config(str(recipe))
