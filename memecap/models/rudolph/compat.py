"""Every workaround memecap needs to use the `rudolph` and `rudalle` packages on a modern stack.

RuDOLPH's model classes live in `rudolph==0.0.1rc10`; its tokenizer wrapper and VQGAN in
`rudalle==1.1.3` (with the VQGAN's encoder/decoder blocks from `taming-transformers==0.0.1`).
All three pin 2021 releases (transformers 4.10, huggingface-hub 0.2, opencv 4.5.4.60,
torchvision, ...) that cannot be installed beside torch 2.13, so scripts/setup.sh installs them
with `--no-deps`. What then breaks, and what this module does about it, one shim each:

1. `huggingface_hub.cached_download` was removed in huggingface_hub 0.26; `rudolph.model`,
   `rudalle.tokenizer` and `rudalle.vae` import it at module level, so their import fails.
   Shim: while (and only while) those modules are imported, `huggingface_hub` carries a
   stand-in that raises if called; the attribute is removed again right after, so libraries
   that probe huggingface_hub for it see the real module. Safe because memecap never calls the
   packages' download helpers (`get_rudolph_model`, `get_vae`, `get_tokenizer`): it downloads
   with `hf_hub_download` (memecap/models/rudolph/weights.py).
2. `import rudolph` and `import rudalle` run package `__init__`s that import torchvision,
   matplotlib, more_itertools, opencv and segmentation_models_pytorch (for plotting, image
   super-resolution and the text-to-image API), none of which the model, the tokenizer or the
   VQGAN encoder need, and torchvision cannot be installed here. Shim: `rudolph` and `rudalle`
   are registered as bare packages (their real `__path__`, their `__init__` not run), so
   `rudolph.model`, `rudalle.tokenizer` and `rudalle.vae` import alone. Nothing else is
   changed: a later `import rudolph.api` still runs the real file (and needs torchvision).
3. `transformers.top_k_top_p_filtering` was removed in transformers 5; only `rudolph.api`
   uses it, which memecap does not import. No shim: memecap decodes with the package's model
   and cache (memecap/models/rudolph/model.py) and transformers' `TopKLogitsWarper` /
   `TopPLogitsWarper`, the replacements transformers names for it.
4. `ruDolphModel(gradient_checkpointing=N)` crashes (`SparseTransformerLayer.forward() got an
   unexpected keyword argument 'has_cache'`): its checkpoint wrapper passes an argument the
   layer no longer takes. Shim: `checkpoint_layers` recomputes each layer in backward with
   torch's non-reentrant checkpoint instead, leaving the package flag off. Tested equal (loss
   and gradients) to the uncheckpointed model, and the package's flag is tested to still crash.
5. The MLP activation `gelu_jit` is a TorchScript function; TorchScript's profiling executor
   re-optimises it for every new input shape (about 2 s each on a CPU: the first steps of each
   batch shape, and again while decoding) and TorchScript is deprecated in torch 2.x. Shim: the
   name `gelu_jit` in `rudolph.model.transformer` is bound to torch's fused tanh-approximate GELU,
   the same formula (0.5 x (1 + tanh(0.79788456 (x + 0.044715 x^3)))), which also keeps only its
   input for backward. Tested equal (within float rounding) to the package's `gelu`.
6. `ruDolphModel` keeps its device in a plain attribute (`self.device`, used to build image
   position ids) that only its own `.to()` updates; Accelerate moves the wrapping module, which
   leaves it stale (CPU ids for CUDA embeddings). Shim: `follow_device` sets it from the
   input tensors before each forward.
7. `ruDolphModel.forward` applies `to_logits` (a LayerNorm and a projection to every text and
   image id: 24,640 for 350M) to every position of its input, also when its cache limits
   attention to the new token, and decoding reads only the last position: at 350M's sequence
   that projection was most of each decoding step. Shim: `last_position_logits` makes
   `to_logits` see only the last position while it is active (a forward pre-hook, removed on
   exit), so the forward returns logits [batch, 1, ids]. Tested to give the same captions as
   projecting every position, greedy and sampled.

Not shims, installed instead (pinned in pyproject.toml): einops 0.8 (the packages pin 0.3; the
`rearrange` they use is unchanged), omegaconf 2.4 (the VQGAN config), PyWavelets 1.9
(`rudalle.vae.model` imports the wavelet decoder at module level, though memecap uses the plain
one). taming-transformers goes in with --no-deps: only its encoder/decoder blocks
(`taming.modules.diffusionmodules.model`, torch and numpy only) are imported, not its
pytorch-lightning training code.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import sys
import types

import torch
from torch.utils.checkpoint import checkpoint

_PACKAGES = ("rudolph", "rudalle")


def _removed_cached_download(*args, **kwargs):
    raise RuntimeError("huggingface_hub.cached_download was removed in huggingface_hub 0.26; memecap downloads "
                       "RuDOLPH files with hf_hub_download (memecap.models.rudolph.weights), not the packages' helpers")


@contextlib.contextmanager
def _cached_download_present():
    """Shim 1: the removed name exists only for the duration of the import."""
    import huggingface_hub

    had = "cached_download" in vars(huggingface_hub)
    if not had:
        huggingface_hub.cached_download = _removed_cached_download
    try:
        yield
    finally:
        if not had:
            delattr(huggingface_hub, "cached_download")


def _bare_package(name: str) -> None:
    """Shim 2: register `name` with its real search path, without running its `__init__`."""
    existing = sys.modules.get(name)
    if existing is not None:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {name!r} package is not installed; run scripts/setup.sh "
                          f"(it installs rudolph==0.0.1rc10, rudalle==1.1.3 and taming-transformers with --no-deps)")
    module = types.ModuleType(
        name, f"{name}, imported by memecap without its __init__ (see memecap/models/rudolph/compat.py)")
    module.__path__ = list(spec.submodule_search_locations)
    module.__spec__ = spec
    module.__file__ = spec.origin
    module.__package__ = name
    module.__version__ = importlib.metadata.version(name)
    sys.modules[name] = module


def import_rudolph() -> types.SimpleNamespace:
    """The package modules memecap uses: `model` (rudolph.model.model), `transformer`
    (rudolph.model.transformer), `model_zoo` (rudolph.model: the MODELS table), `tokenizer`
    (rudalle.tokenizer) and `vae` (rudalle.vae.model)."""
    for name in _PACKAGES:
        _bare_package(name)
    with _cached_download_present():
        modules = {key: importlib.import_module(path) for key, path in (
            ("model_zoo", "rudolph.model"), ("model", "rudolph.model.model"),
            ("transformer", "rudolph.model.transformer"), ("tokenizer", "rudalle.tokenizer"),
            ("vae", "rudalle.vae.model"))}
    transformer = modules["transformer"]
    if not getattr(transformer.gelu_jit, "_memecap", False):  # shim 5
        transformer.packaged_gelu_jit = transformer.gelu_jit
        transformer.gelu_jit = _tanh_gelu
    return types.SimpleNamespace(**modules)


def _tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate="tanh")


_tanh_gelu._memecap = True


def checkpoint_layers(transformer: torch.nn.Module) -> None:
    """Shim 4: recompute every `SparseTransformerLayer` in backward (activations of one layer
    live at a time). Only when training with gradients and no decoding cache; the layers'
    forwards are wrapped per instance, so parameter names and state dicts do not change."""
    for layer in transformer.layers:
        if getattr(layer, "_memecap_checkpointed", False):
            continue
        plain = layer.forward

        def forward(hidden_states, ltor_mask, cache=None, use_cache=False, mlp_cache=False, _plain=plain, _layer=layer):
            if use_cache or not _layer.training or not torch.is_grad_enabled():
                return _plain(hidden_states, ltor_mask, cache, use_cache=use_cache, mlp_cache=mlp_cache)
            return checkpoint(_plain, hidden_states, ltor_mask, cache, use_cache=use_cache, mlp_cache=mlp_cache,
                              use_reentrant=False)

        layer.forward = forward
        layer._memecap_checkpointed = True


def follow_device(model: torch.nn.Module, tensor: torch.Tensor) -> None:
    """Shim 6: keep `ruDolphModel.device` on the device its inputs (and weights) are on."""
    if getattr(model, "device", None) != tensor.device:
        model.device = tensor.device


@contextlib.contextmanager
def last_position_logits(model: torch.nn.Module):
    """Shim 7: inside the block, `model.to_logits` projects the last position only."""
    handle = model.to_logits.register_forward_pre_hook(_last_position)
    try:
        yield
    finally:
        handle.remove()


def _last_position(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0][:, -1:], *args[1:])
