"""Push a trained captioner to the Hugging Face Hub: the trained parts, the config naming the
base models, the tokenizer and a model card; nothing else.

The token is never taken as a setting: huggingface_hub finds it in HF_TOKEN or the stored
login (`hf auth login`), and it never reaches a file, a config or a log line.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml

from memecap.outputs.redact import said
from memecap.publish.model_card import model_card
from memecap.models.export import (BASE_MANIFEST, BUNDLED_DIR, CONFIG_FILE, UnsafePath, export_files, member,
                                   recorded_base_files, set_base)
from memecap.models.packaged import is_package_name
from memecap.outputs.run_layout import EVALUATION_FILE


class PushError(RuntimeError):
    """A push that did not happen; the local export is untouched."""


class PushRefused(ValueError):
    """An export that would upload what memecap did not write (a base folder a config names)."""


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # no copy of big weights where the staging folder is on the same disk
    except OSError:
        shutil.copy2(src, dst)


def stage_export(export: Path, staging: Path, *, repo_id: str, license: str, datasets: Sequence[str] = (),
                 api=None, log: Callable[[str], None] = print) -> list[tuple[str, int]]:
    """Lay out in `staging` exactly what is uploaded; returns (path, bytes) of every file.

    Only files memecap wrote and listed are staged: the export's manifest, each entry inside the
    export, and local base folders memecap made and recorded (the demo's tiny ones), bundled under
    `bases/` since no one else can fetch them. Any other local base stops the push (PushRefused):
    a folder a config names may hold anything. Hub bases without a revision are pinned to the
    commit they have now (with `api`), so the pushed model loads the same later.
    """
    export, staging = Path(export), Path(staging)
    meta = yaml.safe_load((export / CONFIG_FILE).read_text(encoding="utf-8"))
    try:
        for name in export_files(export)[1:]:
            _place(export / name, staging / name)  # `name` was checked to be a plain relative path
        for role, base in (meta.get("bases") or {}).items():
            name = str(base["name"])
            if name.startswith(BUNDLED_DIR + "/"):
                continue  # bundled by an earlier push: its files are in the export's manifest
            if Path(name).is_dir():
                if base["needed_to_load"]:
                    _bundle_local_base(Path(name), role, staging, log)
                    set_base(meta, base, name=f"{BUNDLED_DIR}/{role}")
            elif base.get("revision") is None and api is not None and not is_package_name(name):
                _pin_revision(meta, base, api, log)  # (a package:... base is a pip package's file, not on the Hub)
        evaluation = _evaluation(export)
    except UnsafePath as err:
        raise PushRefused(f"{err}: nothing was pushed") from None
    meta["files"] = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    (staging / CONFIG_FILE).write_text(yaml.safe_dump(meta, allow_unicode=True, sort_keys=False), encoding="utf-8")
    files = sorted((p.relative_to(staging).as_posix(), p.stat().st_size) for p in staging.rglob("*") if p.is_file())
    card = model_card(meta, evaluation, files, repo_id=repo_id, license=license, datasets=datasets)
    (staging / "README.md").write_text(card, encoding="utf-8")
    return sorted(files + [("README.md", len(card.encode("utf-8")))])


def _bundle_local_base(source: Path, role: str, staging: Path, log: Callable[[str], None]) -> None:
    """Stage the files memecap recorded in a local base folder it wrote; refuse any other folder."""
    if not re.fullmatch(r"[A-Za-z0-9_][\w.-]*", role):
        raise PushRefused(f"bases: {role!r} is not a base's role name (bundled as {BUNDLED_DIR}/<role>); "
                          "nothing was pushed")
    recorded = recorded_base_files(source)
    if recorded is None:
        raise PushRefused(
            f"bases.{role}: the base model is the local folder {source}, which memecap did not write "
            f"(no {BASE_MANIFEST} in it), and a push uploads nothing it did not write: push that base to "
            "the Hub first and name its Hub id in the recipe, then train or export again; nothing was pushed")
    size = sum(path.stat().st_size for _, path in recorded)
    log(f"bundling the local base model {source} ({size / 2**20:.1f} MiB, {len(recorded)} files memecap wrote) "
        f"as {BUNDLED_DIR}/{role}: it is not on the Hub")
    for name, path in recorded:
        _place(path, staging / BUNDLED_DIR / role / name)


def _pin_revision(meta: dict, base: dict, api, log: Callable[[str], None]) -> None:
    try:
        set_base(meta, base, revision=api.model_info(base["name"]).sha)
        log(f"pinned {base['name']} to revision {base['revision']}")
    except Exception as err:  # noqa: BLE001 - pinning is a courtesy; the push itself still works
        log(f"warning: could not pin a revision of {base['name']} ({type(err).__name__}); "
            "the pushed config follows its main branch")


def _evaluation(export: Path) -> Optional[dict]:
    """The scores training wrote beside the export, for the card (a link there is refused, as in the manifest)."""
    if not (export / EVALUATION_FILE).exists() and not (export / EVALUATION_FILE).is_symlink():
        return None
    return json.loads(member(export, EVALUATION_FILE, str(export)).read_text(encoding="utf-8"))


def push(source: Path, repo_id: str, *, private: bool = False, license: str = "apache-2.0",
         datasets: Sequence[str] = (), endpoint: Optional[str] = None, commit_message: Optional[str] = None,
         log: Callable[[str], None] = print) -> str:
    """Upload the export at `source` (a run, export or checkpoint folder) to `repo_id`; returns
    the commit URL. Raises PushError saying how to retry, or PushRefused (before anything is uploaded) for
    an export that would upload what memecap did not write; nothing local is changed."""
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
    except (PushError, PushRefused) as err:
        log(f"memecap: {err}")
        return {"repo": cfg.train.hub_repo, "ok": False, "error": str(err).splitlines()[0]}
