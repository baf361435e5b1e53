"""The converters of the original project's translated tables, on tiny hand-made inputs in the
original layouts (one image missing), read back through memecap's own table reader."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from PIL import Image

from memecap.data.tables import load_split

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8), (200, 30, 30)).save(folder / name)
    return folder


def test_flickr_groups_by_image_and_splits_whole_images(tmp_path, capsys):
    uids = [str(1000 + i) for i in range(40)]
    img = images(tmp_path / "flickr30k-images", [f"{u}.jpg" for u in uids[:-1]])  # the last one is missing
    raw = tmp_path / "flickr_data.csv"  # the raw layout: comma-separated, image_name with .jpg
    lines = ["image_name,text"] + [f'{u}.jpg,"Собака, номер {u}, бежит {k}."' for u in uids[:20] for k in range(3)]
    raw.write_text("\n".join(lines) + "\n", encoding="utf-8")
    split = tmp_path / "val.csv"  # the split layout: tab-separated despite the name; 1000 again (the leak)
    split.write_text("uid\ttext\n" + "".join(f'{u}\tЧеловек "{u}" стоит.\n' for u in uids[19:] + ["1000"]),
                     encoding="utf-8")
    out = tmp_path / "out"
    assert script("convert_flickr30k_ru").main([str(raw), str(split), "--images", str(img), "--out", str(out),
                                                "--val", "0.25"]) == 0
    err = capsys.readouterr().err
    assert f"missing image {img / '1039.jpg'}" in err and f"{split}:22" in err and "1 of 40 images" in err

    splits = {name: load_split(out / f"{name}.jsonl", log=None)[0] for name in ("train", "val")}
    seen = [e.uid for examples in splits.values() for e in examples]
    assert sorted(seen) == sorted(uids[:-1]) and len(set(seen)) == len(seen)  # each image in exactly one split
    assert splits["val"] and len(splits["val"]) < len(splits["train"])
    by_uid = {e.uid: e for examples in splits.values() for e in examples}
    assert by_uid["1000"].captions == ("Собака, номер 1000, бежит 0.", "Собака, номер 1000, бежит 1.",
                                       "Собака, номер 1000, бежит 2.", 'Человек "1000" стоит.')
    assert by_uid["1019"].image_path.resolve() == (img / "1019.jpg").resolve()


def test_vizwiz_json_and_translated_table(tmp_path, capsys):
    img = images(tmp_path / "train", ["VizWiz_train_00000000.jpg", "VizWiz_train_00000001.jpg"])
    data = {"images": [{"file_name": f"VizWiz_train_0000000{i}.jpg", "id": i} for i in range(3)],
            "annotations": [
                {"image_id": 0, "caption": "Банка супа на столе.", "is_precanned": False, "is_rejected": False},
                {"image_id": 0, "caption": "Красная банка.", "is_precanned": False, "is_rejected": False},
                {"image_id": 0, "caption": "Quality issues are too severe to recognize visual content.",
                 "is_precanned": True, "is_rejected": False},
                {"image_id": 1, "caption": "Пульт от телевизора.", "is_precanned": False, "is_rejected": True},
                {"image_id": 1, "caption": "Чёрный пульт.", "is_precanned": False, "is_rejected": False},
                {"image_id": 2, "caption": "Кружка.", "is_precanned": False, "is_rejected": False}]}
    (tmp_path / "train.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    convert = script("convert_vizwiz_ru")
    out = tmp_path / "vizwiz_ru" / "train.jsonl"
    assert convert.main([str(tmp_path / "train.json"), "--images", str(img), "--out", str(out)]) == 0
    assert "VizWiz_train_00000002.jpg" in capsys.readouterr().err  # missing image, reported with its row
    examples = {e.uid: e.captions for e in load_split(out, log=None)[0]}
    assert examples == {"VizWiz_train_00000000": ("Банка супа на столе.", "Красная банка."),
                        "VizWiz_train_00000001": ("Чёрный пульт.",)}

    table = tmp_path / "vizwiz_train_translated.csv"  # comma-separated, file_name without .jpg
    table.write_text('caption,file_name,text\nA can.,VizWiz_train_00000000,"Банка, красная."\n'
                     "A mug.,VizWiz_train_00000002,Кружка.\n", encoding="utf-8")
    out2 = tmp_path / "vizwiz_ru" / "train2.jsonl"
    assert convert.main([str(table), "--images", str(img), "--out", str(out2)]) == 0
    assert f"{table}:3" in capsys.readouterr().err
    assert {e.uid: e.captions for e in load_split(out2, log=None)[0]} == {"VizWiz_train_00000000": ("Банка, красная.",)}
