"""Captioning from Python with a trained model, local or on the Hugging Face Hub.

    from memecap import Captioner
    cap = Captioner.from_pretrained("user/memecap-clipcap-lora")   # or a run / export folder
    cap("meme.jpg")                                  # -> 'На фото кот ... Подпись: "..."'
    cap(["a.jpg", pil_image], num_beams=5)           # -> one caption per image
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from PIL import Image

from memecap.config import GenerationConfig
from memecap.generation import with_overrides
from memecap.inference.exported import caption_paths, default_device, exported_generation, open_model
from memecap.models import load_model
from memecap.models.export import HUB_ID

ImageLike = Union[str, os.PathLike, Image.Image]


def download(repo_id: str, **kwargs) -> Path:
    """A Hub model repo's files, through huggingface_hub's cache; a clear error when it has none."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, **kwargs))
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{repo_id}: no such local folder, and no model repo by that id on the Hub "
                                "(or it is private: log in with `hf auth login` or set HF_TOKEN)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError) as err:
        raise FileNotFoundError(f"{repo_id}: no such local folder, and the Hub could not provide it: {err}") from None


class Captioner:
    def __init__(self, model, generation: GenerationConfig, device: Optional[Union[str, torch.device]] = None,
                 batch_size: int = 16, source: str = ""):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.generation = generation
        self.batch_size = batch_size
        self.source = source

    @classmethod
    def from_pretrained(cls, name_or_path: Union[str, os.PathLike], *, revision: Optional[str] = None,
                        device: Optional[Union[str, torch.device]] = None, batch_size: int = 16,
                        token: Optional[str] = None, cache_dir: Optional[str] = None,
                        endpoint: Optional[str] = None) -> "Captioner":
        """A local run/export/checkpoint folder, or a Hub repo id (downloaded and cached; its base
        models are fetched by the ids and revisions its config names). `token` defaults to
        HF_TOKEN or the stored Hub login."""
        if Path(name_or_path).exists() or not HUB_ID.match(str(name_or_path)):
            loaded = open_model(str(name_or_path))  # a folder, or a baseline recipe such as ocr_template
            model, generation = loaded.model, loaded.generation
        else:
            folder = download(str(name_or_path), revision=revision, token=token, cache_dir=cache_dir, endpoint=endpoint)
            model, generation = load_model(folder, with_encoder=True), exported_generation(folder)
        return cls(model, generation or GenerationConfig(), device=device, batch_size=batch_size,
                   source=str(name_or_path))

    def __call__(self, images: Union[ImageLike, Sequence[ImageLike]], *, batch_size: Optional[int] = None,
                 progress: bool = False, **generation) -> Union[str, list[str], list[list[str]]]:
        """Caption one image (-> str) or a list (-> list of str). Keyword arguments override the
        model's generation settings (`num_beams=5`, `strategy="sample"`, `max_new_tokens=60`, ...);
        with `num_return_sequences > 1` each image gets a list of captions."""
        single = isinstance(images, (str, os.PathLike, Image.Image))
        items = [images] if single else list(images)
        if "num_beams" in generation and generation["num_beams"] > 1 and "strategy" not in generation:
            generation["strategy"] = "beam"
        settings = with_overrides(self.generation, **generation)
        captions = caption_paths(self.model, items, settings, device=self.device,
                                 batch_size=batch_size or self.batch_size, progress=progress)
        result = [caps if settings.num_return_sequences > 1 else caps[0] for caps in captions]
        return result[0] if single else result

    def __repr__(self) -> str:
        return f"Captioner({self.source or type(self.model).__name__}, device={self.device})"
