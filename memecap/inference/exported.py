"""Captioning and scoring with an exported model (the `best/` or `final/` folder of a run), or
with a baseline recipe that needs no training (`ocr_template`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from accelerate.utils import send_to_device
from tqdm.auto import tqdm

from memecap.config import GenerationConfig
from memecap.data.tables import load_split
from memecap.evaluation import compute_metrics, refuse_foreign_predictions, write_predictions
from memecap.models import load_model
from memecap.data.datasets import CaptionEvalSet
from memecap.models.export import CONFIG_FILE, read_export_config
from memecap.outputs.run_layout import STATE_FILE

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def default_device() -> torch.device:
    """The best accelerator present: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_export(path: Path) -> Path:
    """Accept an export folder, a training checkpoint (exported next to it on first use), or a
    run folder (then its best export, else its final one)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return export_checkpoint(path)
    for candidate in (path, path / "best", path / "final"):
        if (candidate / CONFIG_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no exported model here or in its best/ or final/ folder")


def export_checkpoint(checkpoint: Path) -> Path:
    """Turn a training checkpoint (Accelerate state + config.yaml) into an export folder beside it."""
    out = checkpoint / "export"
    if (out / CONFIG_FILE).is_file():
        return out
    from safetensors.torch import load_file

    from memecap.config import load_saved_config
    from memecap.models import build_model
    from memecap.training.checkpoint import verify_checkpoint
    from memecap.training.checkpoint_weights import check_frozen_weights, holds_frozen_weights, kept_names
    from memecap.untrusted import check_published_config

    verify_checkpoint(checkpoint)
    cfg = load_saved_config(checkpoint / "config.yaml", check=check_published_config)
    weights = checkpoint / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{checkpoint}: no model.safetensors (a sharded DeepSpeed checkpoint? "
                                "use the run's best/ or final/ export)")
    model = build_model(cfg.model, work_dir=checkpoint.parent.parent)
    state = load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = set(missing) - tied_to_loaded(model, state)
    if not holds_frozen_weights(checkpoint):  # it kept the trained weights: the frozen ones are the bases built now
        trained = {id(p) for p in model.parameters() if p.requires_grad}
        check_frozen_weights(model, trained, checkpoint, str(checkpoint))
        missing -= set(model.state_dict()) - kept_names(model, trained)
    if unexpected or missing:
        raise ValueError(f"{checkpoint}: weights do not fit the model of its config.yaml "
                         f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.save_pretrained(out, generation=cfg.generation)
    return out


def tied_to_loaded(model, state: dict) -> set:
    """Names of parameters that are the same tensor as one the checkpoint holds (a tied output
    layer is saved once, under its input embedding's name)."""
    by_tensor: dict = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        by_tensor.setdefault(id(param), []).append(name)
    return {name for names in by_tensor.values() if any(n in state for n in names) for name in names}


@dataclass
class InferenceModel:
    """A model ready to caption, where its outputs go by default, and its OCR/feature cache."""

    model: object
    generation: Optional[GenerationConfig]
    home: Path  # predictions land here unless --out says otherwise
    cache_dir: Optional[str] = None


def open_model(target: str, overrides: Sequence[str] = ()) -> InferenceModel:
    """A run, export or checkpoint folder; or, when no such folder exists, a recipe naming a
    baseline family (`memecap eval ocr_template --data ...`), with `key=value` overrides."""
    from memecap.config import ConfigError, list_recipes, load_config
    from memecap.models import BASELINES, build_model

    is_recipe = not Path(target).exists() and (target in list_recipes() or target.endswith((".yaml", ".yml")))
    if not is_recipe:
        if overrides:
            raise ConfigError(f"key=value overrides ({' '.join(overrides)}) apply to baseline recipes only, "
                              f"not to the exported model in {target}")
        export = resolve_export(Path(target))
        return InferenceModel(load_model(export, with_encoder=True), exported_generation(export), export)
    cfg = load_config(target, list(overrides))
    if cfg.model.family not in BASELINES:
        raise FileNotFoundError(f"{target}: no such run or export folder; recipe {target!r} must be trained first "
                                f"(memecap train {target} ...): only {', '.join(sorted(BASELINES))} run untrained")
    home = Path(cfg.train.output_dir)
    return InferenceModel(build_model(cfg.model, work_dir=home), cfg.generation, home,
                          cfg.cache.dir if cfg.cache.enabled else None)


def exported_generation(folder: Path) -> Optional[GenerationConfig]:
    from memecap.config import config_from_dict

    meta = read_export_config(folder)
    return config_from_dict({"generation": meta["generation"]}).generation if meta.get("generation") else None


@torch.no_grad()
def caption_paths(model, paths: Sequence, generation: GenerationConfig, *, device: torch.device,
                  batch_size: int = 32, cache_dir: Optional[str] = None, progress: bool = True) -> list[list[str]]:
    """Captions for each image (a path or a PIL image): `num_return_sequences` strings per image."""
    model.to(device).eval()
    images = model.image_inputs(list(paths), cache_dir=cache_dir, device=device, progress=progress)
    return caption_items(model, images, generation, device=device, batch_size=batch_size, progress=progress)


@torch.no_grad()
def caption_items(model, images, generation: GenerationConfig, *, device: torch.device, batch_size: int = 32,
                  progress: bool = True) -> list[list[str]]:
    """Captions for what the model reads per image (its `image_inputs`)."""
    model.to(device).eval()
    dataset = CaptionEvalSet(images)
    out: list[list[str]] = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="captioning", disable=not progress, unit="batch"):
        captions, _ = caption_batch(model, [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))],
                                    generation, device=device)
        out.extend(captions)
    return out


@torch.no_grad()
def caption_batch(model, items: list[dict], generation: GenerationConfig, *,
                  device: torch.device) -> tuple[list[list[str]], Optional[list[str]]]:
    """One batch of `CaptionEvalSet` items: its captions, and the text the model read on each image
    (None for a model that reads none)."""
    batch = model.collate(items)
    texts = batch.get("ocr_text")
    batch = send_to_device(batch, device)  # tensors only: a baseline's batch also holds text
    return model.generate(batch, generation), texts


def evaluate_export(export: Path, table: str, *, out_path: Optional[Path] = None, scoring: str = "memecap",
                    generation: Optional[GenerationConfig] = None, max_rows: Optional[int] = None,
                    image_dir: Optional[str] = None, on_bad_row: str = "error", batch_size: int = 32,
                    cache_dir: Optional[str] = None, progress: bool = True) -> tuple[dict, Path]:
    """Score an exported model on a table; returns the metrics and the predictions file."""
    export = resolve_export(export)
    loaded = InferenceModel(load_model(export, with_encoder=True), exported_generation(export), export, cache_dir)
    return evaluate_model(loaded, table, out_path=out_path, scoring=scoring, generation=generation,
                          max_rows=max_rows, image_dir=image_dir, on_bad_row=on_bad_row, batch_size=batch_size,
                          progress=progress)


def evaluate_model(loaded: InferenceModel, table: str, *, out_path: Optional[Path] = None, scoring: str = "memecap",
                   generation: Optional[GenerationConfig] = None, max_rows: Optional[int] = None,
                   image_dir: Optional[str] = None, on_bad_row: str = "error", batch_size: int = 32,
                   progress: bool = True) -> tuple[dict, Path]:
    """Score a model (an export or a baseline) on a table; returns the metrics and the predictions file."""
    out_path = Path(out_path) if out_path else loaded.home / f"predictions-{Path(str(table)).stem}.jsonl"
    refuse_foreign_predictions(out_path)
    examples, _ = load_split(table, image_dir=image_dir, on_bad_row=on_bad_row, max_rows=max_rows,
                             log=print if progress else None)
    generation = generation or loaded.generation or GenerationConfig()
    captions = caption_paths(loaded.model, [ex.image_path for ex in examples], generation, device=default_device(),
                             batch_size=batch_size, cache_dir=loaded.cache_dir, progress=progress)
    rows = [{"uid": ex.uid, "references": list(ex.captions), "prediction": caps[0]}
            for ex, caps in zip(examples, captions)]
    metrics = compute_metrics([r["prediction"] for r in rows], [r["references"] for r in rows], scoring=scoring)
    write_predictions(out_path, rows)
    return metrics, out_path
