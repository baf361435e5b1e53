"""Output a user reads is memecap's: while weights are built, loaded, exported or checkpointed,
transformers draws none of its own bars ("Writing model shards", "Loading weights") and
Accelerate's "Removed shared tensor {'...lm_head.weight'}" is not shown: GPT-2's output layer is
tied to its input embeddings on purpose, so dropping the duplicate is the expected thing. Any
other shared tensor it removes is still reported. Download bars of the Hub are left alone."""
from __future__ import annotations

import logging
import re
from contextlib import contextmanager

ACCELERATE_SAVE_LOGGER = "accelerate.utils.other"  # where clean_state_dict_for_safetensors warns
SHARED = re.compile(r"Removed shared tensor \{(.*?)\} while saving")


def _no_bar(factory, args, kwargs):
    return factory(*args, **{**kwargs, "disable": True})


class _TiedHeadOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        found = SHARED.search(record.getMessage())
        if not found:
            return True
        names = [n.strip().strip("'\"") for n in found.group(1).split(",")]
        return not all(n.endswith("lm_head.weight") for n in names)


@contextmanager
def quiet_weights():
    """Also a decorator (`@quiet_weights()`)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.set_tqdm_hook(_no_bar)
    logger, tied = logging.getLogger(ACCELERATE_SAVE_LOGGER), _TiedHeadOnly()
    logger.addFilter(tied)
    try:
        yield
    finally:
        logger.removeFilter(tied)
        hf_logging.set_tqdm_hook(previous)


def no_cpu_accelerator_notice() -> None:
    """DeepSpeed, which Accelerate imports on the first `save_pretrained` when it is installed,
    warns on a machine without CUDA that it falls back to its CPU accelerator unless told so: tell
    it what it picks anyway (a user's own DS_ACCELERATOR stays)."""
    import os

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
