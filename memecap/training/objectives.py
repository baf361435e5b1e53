"""What a stage's step minimises (`train.objective`, `stages[i].objective`), whatever the family.

- `CrossEntropy` (ce): the model's loss on the reference captions (models/protocol.py).
- `SelfCritical` (scst): per image, `scst.samples` captions sampled with the generation settings
  (strategy sample), each rewarded (training/scst.py: CIDEr-D against the image's references, the
  quote, length and repetition parts), and the loss -(reward - baseline) x the caption's
  log-probability, the baseline being the mean reward of the image's other samples or its greedy
  caption's. The log-probability is the model's own forward on the sampled caption, re-tokenised
  (`token_log_probs`); tokens that `generation.quote=copy` forced (the quote after its opening mark,
  and the closing mark) are left out: the model did not choose them; so is the end token of a
  caption whose sampling stopped at the length limit (appended to its ids, never sampled). Both go
  to the model as the batch's `unscored` (models/protocol.py), so its loss never scores them. With
  `scst.kl`, the loss adds that weight x the captions' KL estimate to the stage's starting weights
  (a copy of the trained parameters taken at its first step, and kept in each checkpoint so a
  resume keeps the same one). The policy's forward runs without dropout and with batch norm's
  running statistics unless `scst.dropout`: the captions were sampled that way (training/as_sampled.py).

Both return what the loop logs and weighs: `{"loss", "num_tokens"}`; `stepping(model)` is the context
the loop runs a step's forward and backward in; `window()` gives the means of
what the objective adds (the reward and its parts) since it was last asked; `checkpoint_files()` and
`resume_from(folder, mid_stage)` carry what a checkpoint must keep besides the model and optimizer.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext
from pathlib import Path
from typing import ContextManager, Optional

import torch
from accelerate.utils import send_to_device

from memecap.generation import with_overrides
from memecap.quote_copy import QUOTE_PAIRS
from memecap.training.as_sampled import as_sampled, eval_mode
from memecap.training.scst import (REWARD_PARTS, CiderDReward, caption_rewards, kl_to_reference,
                                   leave_one_out_baseline, policy_gradient_loss)

KL_REFERENCE_FILE = "kl_reference.safetensors"  # in a checkpoint of an scst stage with scst.kl > 0


class CrossEntropy:
    def __call__(self, model: torch.nn.Module, batch: dict) -> dict:
        return model(batch)

    def stepping(self, model: torch.nn.Module) -> ContextManager:
        return nullcontext()

    def window(self) -> dict:
        return {}

    def checkpoint_files(self) -> dict:
        return {}

    def resume_from(self, checkpoint: Path, mid_stage: bool) -> None:
        pass


class SelfCritical:
    """The scst step (see the module docstring). Batches are `{"images": collated images with their
    `index`, "items": the items they were collated from}` (what `images_with_items` makes)."""

    def __init__(self, *, accelerator, references: list[list[str]], settings, generation, max_caption_tokens: int,
                 synced_gpus: bool):
        self.accelerator, self.references, self.settings = accelerator, references, settings
        self.cider = CiderDReward(references)
        self.sampling = with_overrides(generation, strategy="sample", num_return_sequences=settings.samples)
        self.greedy = with_overrides(generation, strategy="greedy", num_return_sequences=1)
        self.copies_quote = generation.quote == "copy"
        self.max_caption_tokens, self.synced_gpus = max_caption_tokens, synced_gpus
        self.reference: Optional[dict[str, torch.Tensor]] = None  # trained parameters at the stage's start (kl)
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0

    def __call__(self, model: torch.nn.Module, batch: dict) -> dict:
        net = self.accelerator.unwrap_model(model)
        images, items = batch["images"], batch["items"]
        sampled, greedy = self._captions(net, images)
        k = self.settings.samples
        refs = [self.references[i] for i in images["index"].tolist()]
        ocr = list(images.get("ocr_text") or [""] * len(refs))
        flat = [c for captions in sampled for c in captions]
        parts = caption_rewards(flat, [r for r in refs for _ in range(k)], [o for o in ocr for _ in range(k)],
                                self.cider, self.settings)
        rewards = torch.tensor(parts["reward"]).view(len(refs), k)
        if greedy is None:
            baseline = leave_one_out_baseline(rewards)
        else:
            baseline = torch.tensor(caption_rewards(greedy, refs, ocr, self.cider, self.settings)["reward"])
            baseline = baseline.view(-1, 1).expand_as(rewards)
        ids = [net.encode_caption(c, self.max_caption_tokens) for c in flat]
        captions = net.collate([{"image": items[i // k]["image"], "input_ids": row} for i, row in enumerate(ids)])
        captions["unscored"] = self._unchosen(net, flat, ids)  # the model need not even score them
        captions = send_to_device(captions, self.accelerator.device)
        out = model(captions)
        chosen = out["token_scored"]
        loss = policy_gradient_loss(out["token_log_probs"], chosen, (rewards - baseline).reshape(-1).to(chosen.device))
        if self.settings.kl:
            kl = kl_to_reference(out["token_log_probs"], self._reference_log_probs(net, captions), chosen)
            loss = loss + self.settings.kl * kl.mean()
            parts["kl"] = kl.detach().float().cpu().tolist()
        self._add(parts)
        return {"loss": loss, "num_tokens": chosen.sum()}

    def stepping(self, model: torch.nn.Module) -> ContextManager:
        """Around a step's forward and backward (a checkpointed layer runs its forward again in the
        backward, and must compute what the first pass did): the model scores its samples as it
        sampled them, without dropout and with batch norm's running statistics, unless
        `scst.dropout` keeps the training forward."""
        return nullcontext() if self.settings.dropout else as_sampled(model)

    def _captions(self, net, images: dict) -> tuple[list[list[str]], Optional[list[str]]]:
        """The sampled captions per image and, for the greedy baseline, each image's greedy caption."""
        # Sampled from the policy itself, without dropout's noise, under the run's mixed precision as
        # evaluation generates: the unwrapped model's generate is outside the autocast Accelerate puts
        # around the prepared model's forward.
        with eval_mode(net), torch.no_grad(), self.accelerator.autocast():
            sampled = net.generate(images, self.sampling, synced_gpus=self.synced_gpus)
            greedy = (None if self.settings.baseline != "greedy" else
                      [c[0] for c in net.generate(images, self.greedy, synced_gpus=self.synced_gpus)])
        return sampled, greedy

    def _reference_log_probs(self, net, captions: dict) -> torch.Tensor:
        """The sampled tokens' log-probabilities under the reference weights (the trained parameters
        swapped for their copy; everything else shared), taken at the stage's first step if not restored."""
        trained = {n: p for n, p in net.named_parameters() if p.requires_grad}
        if self.reference is None:
            self.reference = {n: p.detach().clone() for n, p in trained.items()}
        elif set(self.reference) != set(trained):
            raise ValueError(f"scst.kl: the reference holds other parameters than this stage trains "
                             f"({len(self.reference)} against {len(trained)})")
        else:  # restored from a checkpoint: onto the parameters' device (a no-op once there)
            self.reference = {n: t.to(trained[n].device, trained[n].dtype) for n, t in self.reference.items()}
        # The reference is a fixed policy: no dropout noise in its log-probabilities.
        with eval_mode(net), torch.no_grad(), self.accelerator.autocast():
            return torch.func.functional_call(net, self.reference, (captions,), strict=False)["token_log_probs"]

    def checkpoint_files(self) -> dict:
        """{file name: tensors} to keep in a checkpoint: the KL reference, once taken."""
        return {KL_REFERENCE_FILE: self.reference} if self.reference is not None else {}

    def resume_from(self, checkpoint: Path, mid_stage: bool) -> None:
        """Take the KL reference back from a checkpoint written mid-stage (a checkpoint from before the
        stage began has none: the reference is then taken at the first step, as in a fresh stage)."""
        if not (self.settings.kl and mid_stage):
            return
        from safetensors.torch import load_file

        from memecap.training.checkpoint import DamagedCheckpoint

        path = Path(checkpoint) / KL_REFERENCE_FILE
        if not path.is_file():
            raise DamagedCheckpoint(f"{path}: missing; scst.kl needs the stage's starting weights it keeps")
        self.reference = load_file(str(path))

    def _unchosen(self, net, captions: list[str], ids: list[list[int]]) -> torch.Tensor:
        """[captions, tokens] True at the tokens of each caption (`ids`, in order) the model did not choose:
        - the quote that quote copying forced, with its closing mark;
        - the end token of a caption whose sampling stopped at the length limit (or that re-tokenises
          past `max_caption_tokens`): its ids end with that token all the same, but the model never
          chose it there, and a long caption's low reward would push it down where it never stood (on
          real memes, 28% of the samples of a cross-entropy checkpoint reach the limit). The count is
          of the re-tokenised caption, so a caption that ended a token or two short of the limit may
          lose its end token too."""
        unchosen = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.bool)
        limit = min(self.sampling.max_new_tokens, self.max_caption_tokens)
        for row, (caption, caption_ids) in enumerate(zip(captions, ids)):
            span = self._forced_span(net, caption) if self.copies_quote else None
            if span is not None:
                unchosen[row, span[0]:min(span[1], len(caption_ids))] = True
            if len(net.encode_caption(caption, 10**6)) - 1 >= limit:
                unchosen[row, len(caption_ids) - 1] = True
        return unchosen

    def _forced_span(self, net, caption: str) -> Optional[tuple[int, int]]:
        """Token indices [start, end) of the copied quote and its closing mark within the caption."""
        opening = min((i for i in (caption.find(mark) for mark in QUOTE_PAIRS) if i >= 0), default=-1)
        if opening < 0:
            return None
        closing = caption.find(QUOTE_PAIRS[caption[opening]], opening + 1)
        end = len(caption) if closing < 0 else closing + 1

        def tokens(text: str) -> int:  # the caption's ids up to there, its end token not counted
            return len(net.encode_caption(text, 10**6)) - 1

        return tokens(caption[:opening + 1]), tokens(caption[:end])

    def _add(self, parts: dict) -> None:
        n = len(parts["reward"])
        for name in ("reward", *REWARD_PARTS, *(["kl"] if "kl" in parts else [])):
            self._sums[name] += sum(parts[name])
        self._count += n

    def window(self) -> dict:
        """Mean reward and parts per sampled caption since the last call (this process's)."""
        if not self._count:
            return {}
        means = {name: total / self._count for name, total in self._sums.items()}
        self._sums, self._count = defaultdict(float), 0
        return means


class ImagesWithItems:
    """A loader's collate for an scst stage: the images collated as for captioning (with `index`),
    and the items themselves (the step pairs each image with its sampled captions)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items: list[dict]) -> dict:
        images = self.collate(items)
        kept = set(images["index"].tolist())  # an unreadable image's item was dropped (data.on_bad_row)
        return {"images": images, "items": [it for it in items if it.get("index") in kept]}
