"""`memecap prepare RECIPE [key=value ...]`: what a run computes before its first step, computed
ahead and kept in `cache.dir`: every stage's tables read and checked (the image checks cached), and
each image's inputs as the model reads them (a frozen encoder's features, RuDOLPH's image codes,
OCR texts for the models that read them). The training run then finds them in the cache.

    memecap prepare clipcap_mlp_frozen data.train=big/train.tsv data.val=big/val.tsv
    accelerate launch --num_processes 8 -m memecap.prepare RECIPE [key=value ...]   # across processes, nodes

Under `accelerate launch` each process takes every N-th of the sorted, distinct images, so each is
computed once; the caches are keyed by content, so a prepare that is stopped and started again
computes only what is missing. A model whose encoder trains has nothing to cache but the checks.
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from memecap.config import Config, ConfigError


def shares(paths: list[Path], processes: int) -> list[list[Path]]:
    """Each process's images: every `processes`-th of the sorted, distinct paths."""
    distinct = sorted(set(paths))
    return [distinct[rank::processes] for rank in range(processes)]


def main(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """Check every stage's data and fill the caches with this process's share of the images.
    Returns (on every process) the images per process and the seconds taken."""
    from accelerate.utils import gather_object, set_seed

    from memecap.models import build_model
    from memecap.training.accelerate_setup import make_accelerator
    from memecap.training.stages import load_stage_examples, plan_stages

    if not cfg.cache.enabled:
        raise ConfigError("cache.enabled=false: prepare fills the caches, and a run with them off would not read them")
    state = make_accelerator(cfg)  # the processes, devices and backend a training run of this recipe gets
    say = log if state.is_main_process else (lambda _message: None)
    work_dir = Path(cfg.cache.dir).expanduser() / "prepare"  # the synthetic demo set, when a recipe uses it
    start = time.perf_counter()
    with state.main_process_first():  # the first checks every image, the others read its results
        data = [load_stage_examples(cfg, stage, work_dir=work_dir, log=say) for stage in plan_stages(cfg)]
    texts = [c for train, _ in data for ex in train for c in ex.captions]
    set_seed(cfg.train.seed)  # as the run builds it: a random tiny model gets the same weights, and cache key
    with state.main_process_first():
        net = build_model(copy.deepcopy(cfg.model), work_dir=work_dir, train_texts=texts)
    mine = shares([ex.image_path for stage in data for split in stage for ex in split], state.num_processes)
    mine = mine[state.process_index]
    net.image_inputs(mine, cache_dir=cfg.cache.dir, device=state.device,
                     progress=cfg.train.progress_bar and state.is_main_process,
                     desc=f"preparing images (process {state.process_index + 1} of {state.num_processes})")
    counts = gather_object([len(mine)]) if state.num_processes > 1 else [len(mine)]
    seconds = time.perf_counter() - start
    state.wait_for_everyone()
    say(f"prepared {sum(counts)} images in {seconds:.1f} s on {state.num_processes} process(es) "
        f"(images per process: {', '.join(map(str, counts))}) into {cfg.cache.dir}")
    return {"images": sum(counts), "per_process": counts, "seconds": seconds}


def cli(argv: Optional[list[str]] = None) -> int:
    """`python -m memecap.prepare RECIPE [key=value ...]` (what `accelerate launch -m` runs)."""
    from memecap.data.validation import DataError
    from memecap.outputs.redact import said
    from memecap.train import recipe_from_argv

    cfg = recipe_from_argv(argv, __doc__)
    if isinstance(cfg, int):
        return cfg
    try:
        main(cfg)
    except ConfigError as err:
        print(f"memecap: config error: {said(str(err))}", file=sys.stderr)
        return 2
    except DataError as err:  # every problem of the tables, with file and line
        print(f"memecap: {said(str(err))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
