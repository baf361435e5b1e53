"""Push a trained captioner to the Hugging Face Hub: the trained parts, the config naming the
base models, the tokenizer and a model card; nothing else.

The token is never taken as a setting: huggingface_hub finds it in HF_TOKEN or the stored
login (`hf auth login`), and it never reaches a file, a config or a log line.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml

from memecap.outputs.redact import said
from memecap.publish.model_card import model_card
from memecap.models.export import BUNDLED_DIR, CONFIG_FILE, export_files, set_base

EVALUATION_FILE = "eval.json"  # written beside an export by the training loop; read for the card


class PushError(RuntimeError):
    """A push that did not happen; the local export is untouched."""


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no copy of big weights where the staging folder is on the same disk
    except OSError:
        shutil.copy2(src, dst)


def stage_export(export: Path, staging: Path, *, repo_id: str, license: str, datasets: Sequence[str] = (),
                 api=None, log: Callable[[str], None] = print) -> list[tuple[str, int]]:
    """Lay out in `staging` exactly what is uploaded; returns (path, bytes) of every file.

    Base models that are local folders (the demo's tiny ones, a user's own) are bundled under
    `bases/`, since no one else can fetch them; Hub bases without a revision are pinned to the
    commit they have now (with `api`), so the pushed model loads the same later.
    """
    export, staging = Path(export), Path(staging)
    meta = yaml.safe_load((export / CONFIG_FILE).read_text(encoding="utf-8"))
    for name in export_files(export)[1:]:
        _place(export / name, staging / name)
    for role, base in (meta.get("bases") or {}).items():
        if Path(str(base["name"])).is_dir():
            if not base["needed_to_load"]:
                continue
            source = Path(base["name"])
            size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
            log(f"bundling the local base model {source} ({size / 2**20:.1f} MiB) as {BUNDLED_DIR}/{role}: "
                "it is not on the Hub")
            for path in sorted(p for p in source.rglob("*") if p.is_file()):
                _place(path, staging / BUNDLED_DIR / role / path.relative_to(source))
            set_base(meta, base, name=f"{BUNDLED_DIR}/{role}")
        elif base.get("revision") is None and api is not None:
            try:
                set_base(meta, base, revision=api.model_info(base["name"]).sha)
                log(f"pinned {base['name']} to revision {base['revision']}")
            except Exception as err:  # noqa: BLE001 - pinning is a courtesy; the push itself still works
                log(f"warning: could not pin a revision of {base['name']} ({type(err).__name__}); "
                    "the pushed config follows its main branch")
    meta["files"] = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    (staging / CONFIG_FILE).write_text(yaml.safe_dump(meta, allow_unicode=True, sort_keys=False), encoding="utf-8")
    evaluation = None
    if (export / EVALUATION_FILE).is_file():
        evaluation = json.loads((export / EVALUATION_FILE).read_text(encoding="utf-8"))
    files = sorted((p.relative_to(staging).as_posix(), p.stat().st_size) for p in staging.rglob("*") if p.is_file())
    card = model_card(meta, evaluation, files, repo_id=repo_id, license=license, datasets=datasets)
    (staging / "README.md").write_text(card, encoding="utf-8")
    return sorted(files + [("README.md", len(card.encode("utf-8")))])


def push(source: Path, repo_id: str, *, private: bool = False, license: str = "apache-2.0",
         datasets: Sequence[str] = (), endpoint: Optional[str] = None, commit_message: Optional[str] = None,
         log: Callable[[str], None] = print) -> str:
    """Upload the export at `source` (a run, export or checkpoint folder) to `repo_id`; returns
    the commit URL. Raises PushError saying how to retry; nothing local is changed."""
    from huggingface_hub import HfApi, get_token

    from memecap.inference.exported import resolve_export

    export = resolve_export(Path(source))
    retry = f"Nothing local was changed: the model is in {export}. Retry with: memecap push {export} --repo {repo_id}"
    if get_token() is None:
        raise PushError(f"no Hugging Face token: set HF_TOKEN or run `hf auth login`. {retry}")
    api = HfApi(endpoint=endpoint)
    with tempfile.TemporaryDirectory(prefix="memecap-push-") as staging:
        files = stage_export(export, Path(staging), repo_id=repo_id, license=license, datasets=datasets,
                             api=api, log=log)
        total = sum(size for _, size in files)
        log(f"pushing {len(files)} files ({total / 2**20:.1f} MiB) from {export} to {repo_id}")
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=staging,
                                       commit_message=commit_message or f"Upload memecap model from {export.name}")
        except Exception as err:  # noqa: BLE001 - every failure gets the same way back
            # The server's words may echo the request (its token) and span lines: one line, redacted.
            failed = said(f"pushing to {repo_id} failed: {type(err).__name__}: {err}")
            raise PushError(f"{failed}\n{said(retry)}") from err
    url = getattr(commit, "commit_url", None) or str(commit)
    log(f"pushed: {url}")
    return url


def require_hub_token(cfg) -> None:
    """Fail before training, not after it, when the push at the end could not authenticate."""
    if cfg.train.push_to_hub:
        from huggingface_hub import get_token

        from memecap.config import ConfigError

        if get_token() is None:
            raise ConfigError("train.push_to_hub=true but no Hugging Face token was found: "
                              "set HF_TOKEN or run `hf auth login` first")


def push_run(out_dir: Path, cfg, log: Callable[[str], None]) -> dict:
    """Push a finished run's best export (else its final one). A failure is reported, not raised:
    the run's outputs are all on disk by then, and the message says how to push them again."""
    source = out_dir / "best" if (out_dir / "best").is_dir() else out_dir / "final"
    try:
        url = push(source, cfg.train.hub_repo, private=cfg.train.hub_private, license=cfg.train.hub_license, log=log)
        return {"repo": cfg.train.hub_repo, "ok": True, "url": url}
    except PushError as err:
        log(f"memecap: {err}")
        return {"repo": cfg.train.hub_repo, "ok": False, "error": str(err).splitlines()[0]}
