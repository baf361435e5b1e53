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
BITSANDBYTES_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
OPTIONAL_KERNEL = "Failed to load CPU gemm_4bit_forward"
GGUF_READER = "transformers.modeling_gguf_pytorch_utils"
MODELING_LOGGER = "transformers.modeling_utils"
PADDING_ADVICE = "We strongly recommend passing in an `attention_mask`"


def _no_bar(factory, args, kwargs):
    return factory(*args, **{**kwargs, "disable": True})


class _TiedHeadOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        found = SHARED.search(record.getMessage())
        if not found:
            return True
        names = [n.strip().strip("'\"") for n in found.group(1).split(",")]
        return not all(n.endswith("lm_head.weight") for n in names)


class _NoOptionalKernelNotice(logging.Filter):
    """bitsandbytes, imported with peft, warns on CPUs with AVX-512 BF16 that an optional faster
    4-bit kernel (another pip package) is absent; its own CPU path, which memecap tests, is used."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(OPTIONAL_KERNEL)


class _NoPaddingAdvice(logging.Filter):
    """memecap passes a mask with every prompt; transformers' `generate` drops an all-ones one and
    then, once a finished caption is padded with the end token, advises passing a mask."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(PADDING_ADVICE)


@contextmanager
def _filtering(logger_name: str, kind: type):
    logger, active = logging.getLogger(logger_name), kind()
    logger.addFilter(active)
    try:
        yield
    finally:
        logger.removeFilter(active)


def no_padding_advice():
    return _filtering(MODELING_LOGGER, _NoPaddingAdvice)


def _install_once(logger_name: str, kind: type) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


_install_once(BITSANDBYTES_CPU_LOGGER, _NoOptionalKernelNotice)


def no_gguf_conversion_bar() -> None:
    """transformers draws "Converting and de-quantizing GGUF tensors" with its own tqdm (not the
    hook quiet_weights sets) on every load of a GGUF file; memecap says what it loads itself."""
    import importlib
    from functools import partial

    reader = importlib.import_module(GGUF_READER)
    bar = getattr(reader, "tqdm", None)
    if bar is not None and not isinstance(bar, partial):
        reader.tqdm = partial(bar, disable=True)


@contextmanager
def quiet_weights():
    """Also a decorator (`@quiet_weights()`)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.set_tqdm_hook(_no_bar)
    try:
        with _filtering(ACCELERATE_SAVE_LOGGER, _TiedHeadOnly):
            yield
    finally:
        hf_logging.set_tqdm_hook(previous)


def no_cpu_accelerator_notice() -> None:
    """DeepSpeed, which Accelerate imports on the first `save_pretrained` when it is installed,
    warns on a machine without CUDA that it falls back to its CPU accelerator unless told so: tell
    it what it picks anyway (a user's own DS_ACCELERATOR stays)."""
    import os

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
