"""Every family satisfies the protocols the loop, inference, plan and publishing use: by name
and by parameters (a runtime_checkable Protocol checks only that the names exist)."""
from __future__ import annotations

import inspect

import pytest
import torch

from memecap.models.protocol import CaptioningModel, TrainableModel

pytestmark = pytest.mark.usefixtures("one_thread")


def protocol_methods(protocol) -> dict:
    return {name: member for cls in reversed(protocol.__mro__) if cls.__module__ == protocol.__module__
            for name, member in vars(cls).items() if inspect.isfunction(member) and not name.startswith("_")}


def signature_gaps(model, protocol) -> list[str]:
    """The protocol's parameters a model's methods lack, take in another way, or make required
    where the protocol has a default (the default itself may differ: a progress label)."""
    gaps = []
    for name, wanted in protocol_methods(protocol).items():
        have = inspect.signature(getattr(model, name)).parameters
        if any(p.kind is p.VAR_KEYWORD for p in have.values()):
            continue
        for param in list(inspect.signature(wanted).parameters.values())[1:]:  # past self
            got = have.get(param.name)
            if got is None or got.kind != param.kind or (got.default is got.empty) != (param.default is param.empty):
                gaps.append(f"{name}({param})" + (f": has {got}" if got is not None else ": missing"))
    return gaps


def one_model_of_each_family(tmp_path):
    """A model of every family in FAMILIES: the pinned exports where there is one, else a tiny build."""
    from memecap.config import load_config
    from memecap.models import FAMILIES, build_model, load_model
    from tests.data.make_pinned import EXPORTS, RUNS

    built = {"vlm": ("vlm_tiny", ["model.vlm.tiny_architecture=qwen2_vl", "model.vlm.mode=lora"]),
             "ocr_template": ("ocr_template", [])}
    assert set(FAMILIES) == set(RUNS) | set(built), "a new family needs a model here"
    for family in FAMILIES:
        if family in RUNS:
            yield family, load_model(EXPORTS / family)
        else:
            recipe, overrides = built[family]
            cfg = load_config(recipe, overrides)
            yield family, build_model(cfg.model, work_dir=tmp_path, train_texts=["на фото кот", "на фото пёс"])


def test_every_family_holds_to_the_protocols(tmp_path):
    from memecap.models import FAMILIES

    for family, model in one_model_of_each_family(tmp_path):
        assert isinstance(model, CaptioningModel), family
        assert signature_gaps(model, CaptioningModel) == [], family
        if FAMILIES[family].baseline:
            continue
        assert isinstance(model, TrainableModel), family
        assert signature_gaps(model, TrainableModel) == [], family
        assert model.config.hidden_size > 0, family  # DeepSpeed's "auto" sizes
        assert isinstance(model.eos_id, int) and isinstance(model.pad_id, int), family


def test_every_family_gives_each_caption_tokens_log_probability(tmp_path, synthetic_data):
    """The forward's per-token log-probabilities (what self-critical training weighs) cover exactly
    each caption's tokens, in order, and agree with the cross-entropy the family trains on."""
    from memecap.models import FAMILIES

    images = sorted((synthetic_data["train"].parent / "images").glob("*.jpg"))[:2]
    for family, model in one_model_of_each_family(tmp_path):
        if FAMILIES[family].baseline:
            continue
        model.train(False)
        inputs = model.image_inputs(images, cache_dir=None, device="cpu", progress=False)
        ids = [model.encode_caption(text, 24) for text in ("на фото кот", "на фото пёс и кот")]
        with torch.no_grad():
            out = model(model.collate([{"image": inputs[i], "input_ids": ids[i]} for i in range(2)]))
        scored, log_probs = out["token_scored"], out["token_log_probs"]
        assert scored.shape == log_probs.shape and scored.sum(dim=1).tolist() == [len(i) for i in ids], family
        assert (log_probs[~scored] == 0).all() and (log_probs[scored] < 0).all(), family
        if family != "rudolph":  # RuDOLPH's loss also weighs its left text and image codes
            assert -log_probs.sum() / out["num_tokens"] == pytest.approx(out["loss"].item(), rel=1e-5), family

        # Caption tokens the batch marks `unscored` (in each caption's order) are left out, the rest kept.
        batch = model.collate([{"image": inputs[i], "input_ids": ids[i]} for i in range(2)])
        batch["unscored"] = torch.zeros(2, len(ids[1]), dtype=torch.bool)
        batch["unscored"][1, [0, len(ids[1]) - 1]] = True
        with torch.no_grad():
            marked = model(batch)
        assert marked["token_scored"].sum(dim=1).tolist() == [len(ids[0]), len(ids[1]) - 2], family
        kept = [log_probs[row][scored[row]] for row in range(2)]
        kept[1] = kept[1][1:-1]
        got = [marked["token_log_probs"][row][marked["token_scored"][row]] for row in range(2)]
        for row in range(2):
            torch.testing.assert_close(got[row], kept[row], rtol=1e-5, atol=1e-6, msg=family)


def test_the_signature_check_sees_a_parameter_taken_another_way():
    class Lopsided:
        def image_inputs(self, paths, cache_dir, device, progress, desc="images"):  # not keyword-only
            return []

        def collate(self, items):
            return {}

        def generate(self, batch, generation):  # no synced_gpus
            return []

        def save_pretrained(self, out_dir, generation=None, state_dict=None):
            pass

    gaps = signature_gaps(Lopsided(), CaptioningModel)
    assert isinstance(Lopsided(), CaptioningModel)  # names alone pass
    assert [gap.split("(")[0] for gap in gaps] == ["image_inputs"] * 4 + ["generate"]


def test_model_card_tags_any_family_with_an_adapter():
    from memecap.publish.model_card import model_card

    meta = {"family": "rudolph", "model": {"rudolph": {"mode": "lora"}}, "bases": {},
            "files": ["adapter/adapter_config.json", "adapter/adapter_model.safetensors", "tokenizer/bpe.model"]}
    card = model_card(meta, None, [], repo_id="you/x", license="apache-2.0")
    assert "- lora" in card and "- peft" in card
    meta["files"] = ["model.safetensors"]
    assert "- lora" not in model_card(meta, None, [], repo_id="you/x", license="apache-2.0")


def test_a_checkpoint_with_a_tied_output_layer_exports(tiny_lora_run, tmp_path):
    """The tied lm_head is found from the model's own parameter aliases, not from a list of names."""
    import shutil

    from memecap.training.checkpoint import list_checkpoints
    from memecap.inference.exported import resolve_export

    run = tmp_path / "run"
    shutil.copytree(tiny_lora_run, run, ignore=shutil.ignore_patterns("export"))
    export = resolve_export(list_checkpoints(run)[-1])
    assert (export / "memecap.yaml").is_file() and (export / "adapter" / "adapter_model.safetensors").is_file()


def test_loading_an_export_shows_the_user_no_library_warning():
    """Warnings Python shows by default (not DeprecationWarning): PEFT reading transformers'
    deprecated `is_gradient_checkpointing` printed a FutureWarning at every adapter load."""
    import warnings

    from memecap.models import load_model
    from tests.data.make_pinned import EXPORTS, RUNS

    with_adapter = [f for f in RUNS if any((EXPORTS / f).glob("**/adapter_config.json"))]
    assert with_adapter, "no pinned export holds an adapter"
    for family in RUNS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_model(EXPORTS / family)
        shown = [f"{w.category.__name__}: {w.message}" for w in caught
                 if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
        assert shown == [], family
