"""Behaviour pinned by tests/data/make_pinned.py: each family's fixed-seed tiny run reproduces its
recorded losses, and exports written by an earlier memecap load and caption the same."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from memecap import train
from tests.helpers import reset_accelerate
from tests.data.make_pinned import EXPORTS, PINNED, RUNS, committed_bases, family_config, synthetic, train_losses

pytestmark = pytest.mark.usefixtures("one_thread")
PINS = json.loads(PINNED.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def pinned_data(tmp_path_factory):
    return synthetic(tmp_path_factory.mktemp("pinned") / "synthetic")


@pytest.mark.parametrize("family", list(RUNS))
def test_training_losses_stay_pinned(family, pinned_data, tmp_path):
    try:
        train.main(family_config(family, tmp_path / "run", pinned_data, *committed_bases(family)))
    finally:
        reset_accelerate()
    # Float sums may differ in the last bits between CPU kinds; a change of the math moves far more.
    assert train_losses(tmp_path / "run") == pytest.approx(PINS["losses"][family], rel=2e-4, abs=2e-4)


@pytest.mark.parametrize("family", list(RUNS))
def test_old_exports_load_and_caption_the_same(family, tmp_path):
    from memecap import Captioner

    export = tmp_path / family
    shutil.copytree(EXPORTS / family, export)  # loading must not write into the export
    before = {p: p.stat().st_mtime_ns for p in export.rglob("*")}
    images = sorted(str(p) for p in (EXPORTS / "images").glob("*.jpg"))
    captioner = Captioner.from_pretrained(export, device="cpu")
    assert captioner(images) == PINS["captions"][family]
    assert {p: p.stat().st_mtime_ns for p in export.rglob("*")} == before


def test_the_pinned_images_match_the_synthetic_set(pinned_data):
    """The exported captions were made on these images; a change of the synthetic generator
    shows here first, not as a puzzling caption mismatch."""
    regenerated = sorted((Path(pinned_data["val"]).parent / "images").glob("*.jpg"))[:3]
    assert [p.read_bytes() for p in regenerated] == [p.read_bytes() for p in sorted((EXPORTS / "images").glob("*.jpg"))]
