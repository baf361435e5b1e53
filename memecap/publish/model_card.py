"""The README.md (model card) pushed with a trained captioner: Hub metadata, usage, the
evaluation table and sample captions of the evaluation that selected the export."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import yaml

from memecap.models import DEFAULT_FAMILY
from memecap.models.export import BUNDLED_DIR, HUB_ID

METRIC_NAMES = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4", "meteor": "METEOR",
                "cider": "CIDEr-D", "rougeL": "ROUGE-L", "quote": "quote CER", "val_loss": "val loss"}


def training_summary(cfg, steps: int) -> dict:
    """The training settings a model card reports (no paths, no secrets)."""
    return {"optimizer": cfg.optim.name, "learning rate": cfg.optim.lr, "scheduler": cfg.optim.scheduler,
            "batch size": f"{cfg.train.batch_size} x {cfg.train.grad_accum} accumulation per process",
            "optimizer steps": steps, "mixed precision": cfg.train.mixed_precision}


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def hub_bases(meta: dict) -> list[str]:
    """Base models that live on the Hub (bundled and local folders are not Hub ids)."""
    names = []
    for base in (meta.get("bases") or {}).values():
        name = str(base["name"])
        if not name.startswith(BUNDLED_DIR + "/") and not Path(name).exists() and HUB_ID.match(name):
            names.append(name)
    return names


def describe_model(meta: dict) -> list[str]:
    model = meta["model"]
    lines = [f"- family: `{meta.get('family', 'clipcap')}`"]
    for role, base in (meta.get("bases") or {}).items():
        where = ("bundled in this repo" if str(base["name"]).startswith("bases/")
                 else f"`{base['name']}`" + (f" at revision `{base['revision']}`" if base.get("revision") else ""))
        if base.get("in_export"):  # trained whole: the repo holds it, the base is where it started
            where = f"trained whole from {where}, in this repo's {', '.join(f'`{d}/`' for d in base['in_export'])}"
        section = model.get(base["section"], {})
        how = section.get("mode") or ("trained" if section.get("trainable") else "frozen")
        lines.append(f"- {role}: {where} ({how})")
    lines += [f"- {line}" for line in meta.get("architecture", [])]  # the family's own words
    return lines


def has_adapter(meta: dict) -> bool:
    """A PEFT adapter is among the exported files (any family's LoRA)."""
    return any(Path(name).name == "adapter_config.json" for name in meta.get("files", []))


def model_card(meta: dict, evaluation: Optional[dict], files: Sequence[tuple[str, int]], *, repo_id: str,
               license: str, datasets: Sequence[str] = ()) -> str:
    family = meta.get("family", DEFAULT_FAMILY)
    header = {"language": ["ru"], "license": license, "library_name": "memecap", "pipeline_tag": "image-to-text",
              "tags": (["memecap", "image-captioning", "memes", family]
                       + (["lora", "peft"] if has_adapter(meta) else []))}
    if hub_bases(meta):
        header["base_model"] = hub_bases(meta)
    if datasets:
        header["datasets"] = list(datasets)
    parts = ["---", yaml.safe_dump(header, allow_unicode=True, sort_keys=False).strip(), "---", "",
             f"# {repo_id.split('/')[-1]}", "",
             "Writes detailed Russian descriptions of memes: what is pictured, and the meme's text quoted "
             "(`На фото ... Подпись: \"...\"`). Trained with [memecap](https://pypi.org/project/memecap/).", "",
             *describe_model(meta), "", "## Use", "", "```python", "from memecap import Captioner", "",
             f'cap = Captioner.from_pretrained("{repo_id}")',
             'print(cap("meme.jpg"))                      # one caption',
             'print(cap(["a.jpg", "b.png"], num_beams=5))  # a batch, beam search', "```", "",
             "```bash", f"memecap caption memes/ --model {repo_id} --out captions.jsonl", "```", ""]
    if evaluation:
        metrics = evaluation.get("metrics", {})
        data = evaluation.get("data", {})
        shown = [k for k in METRIC_NAMES if k in metrics] + [k for k in metrics if k not in METRIC_NAMES]
        parts += ["## Evaluation", "",
                  f"On {data.get('val_examples', '?')} validation memes (`{data.get('val', '?')}`), at optimizer "
                  f"step {evaluation.get('step', '?')}; corpus BLEU, mean METEOR, CIDEr-D (x10, COCO caption "
                  "evaluation), ROUGE-L and the quote's character error rate (lower is better) of the generated "
                  "captions, on lower-cased Russian word tokens.", "",
                  "| " + " | ".join(METRIC_NAMES.get(k, k) for k in shown) + " |",
                  "|" + "---|" * len(shown),
                  "| " + " | ".join(f"{metrics[k]:.4f}" if isinstance(metrics[k], float) else str(metrics[k])
                                    for k in shown) + " |", ""]
        samples = evaluation.get("samples") or []
        if samples:
            parts += ["### Sample captions", "", "| image | generated | reference |", "|---|---|---|"]
            parts += [f"| {_cell(s['uid'])} | {_cell(s['prediction'])} | {_cell(s['references'][0])} |"
                      for s in samples]
            parts.append("")
        training = evaluation.get("training")
        if training:
            parts += ["## Training", "", *(f"- {k}: `{v}`" for k, v in training.items()), ""]
    parts += ["## Files", "", "| file | bytes |", "|---|---|",
              *(f"| `{name}` | {size:,} |" for name, size in files), "",
              "## Limitations", "",
              "Generated descriptions can misread or invent the meme's text and misjudge what is pictured; "
              "check them before publishing.", ""]
    return "\n".join(parts)
