"""`memecap prepare RECIPE [key=value ...]`: what a run computes before its first step, computed
ahead and kept in `cache.dir`: every stage's tables read and checked (the image checks cached), and
each image's inputs as the model reads them (a frozen encoder's features, RuDOLPH's image codes,
OCR texts for the models that read them). The training run then finds them in the cache.

    memecap prepare clipcap_mlp_frozen data.train=big/train.tsv data.val=big/val.tsv
    accelerate launch --num_processes 8 -m memecap.prepare RECIPE [key=value ...]   # across processes, nodes

Under `accelerate launch` each process takes every N-th of the sorted, distinct images (of a streamed
split, with `data.streaming`, its share of the files or rows, as training reads them), so each is
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

STREAM_CHUNK = 1024  # streamed rows whose images are computed together: bounded memory, full encoder batches


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
    from memecap.training.stages import is_streamed, load_stage_examples, plan_stages, train_captions

    if not cfg.cache.enabled:
        raise ConfigError("cache.enabled=false: prepare fills the caches, and a run with them off would not read them")
    state = make_accelerator(cfg)  # the processes, devices and backend a training run of this recipe gets
    say = log if state.is_main_process else (lambda _message: None)
    work_dir = Path(cfg.cache.dir).expanduser() / "prepare"  # the synthetic demo set, when a recipe uses it
    start = time.perf_counter()
    with state.main_process_first():  # the first checks every image, the others read its results
        data = [load_stage_examples(cfg, stage, work_dir=work_dir, log=say) for stage in plan_stages(cfg)]
    texts = [c for train, _ in data for c in train_captions(train)]
    set_seed(cfg.train.seed)  # as the run builds it: a random tiny model gets the same weights, and cache key
    with state.main_process_first():
        net = build_model(copy.deepcopy(cfg.model), work_dir=work_dir, train_texts=texts)
    tables = [split for stage in data for split in stage if not is_streamed(split)]
    mine = shares([ex.image_path for split in tables for ex in split], state.num_processes)[state.process_index]
    show = cfg.train.progress_bar and state.is_main_process
    desc = f"preparing images (process {state.process_index + 1} of {state.num_processes})"
    net.image_inputs(mine, cache_dir=cfg.cache.dir, device=state.device, progress=show, desc=desc)
    done = len(mine)
    for split in (split for stage in data for split in stage if is_streamed(split)):
        done += prepare_stream(net, split, cfg, state, progress=show, desc=f"{desc}, {split.key}",
                               log=log)
    counts = gather_object([done]) if state.num_processes > 1 else [done]
    seconds = time.perf_counter() - start
    state.wait_for_everyone()
    say(f"prepared {sum(counts)} images in {seconds:.1f} s on {state.num_processes} process(es) "
        f"(images per process: {', '.join(map(str, counts))}) into {cfg.cache.dir}")
    return {"images": sum(counts), "per_process": counts, "seconds": seconds}


def prepare_stream(net, split, cfg: Config, state, *, progress: bool, desc: str, log: Callable[[str], None]) -> int:
    """This process's share of a streamed split, read in chunks, its images' inputs computed into the
    caches; returns the rows read (a bad row or image follows data.on_bad_row, named)."""
    from itertools import islice

    from tqdm.auto import tqdm

    from memecap.data.streamed_split import ImageSpool, stream_examples
    from memecap.training.image_reads import readable_inputs

    stream = iter(split.stream(rank=state.process_index, world_size=state.num_processes, log=log))
    spool, read = ImageSpool(), 0
    bar = tqdm(total=split.rows_per_process(state.num_processes)[state.process_index], desc=desc, unit="img",
               disable=not progress)
    try:
        while chunk := list(islice(stream, STREAM_CHUNK)):
            paths = spool.paths(chunk)
            try:
                readable_inputs(stream_examples(chunk, paths),
                                lambda p: net.image_inputs(p, cache_dir=cfg.cache.dir, device=state.device,
                                                           progress=False),
                                on_bad_row=split.on_bad_row, split=split.key, log=log)
            finally:
                spool.release(paths)
            read += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
        spool.close()
    return read


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
