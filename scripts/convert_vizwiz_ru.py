"""Convert the meme project's machine-translated VizWiz-Captions (Russian) into memecap tables.

    python scripts/convert_vizwiz_ru.py vizwiz_train_translated.csv --images train/ --out data/vizwiz_ru/train.jsonl
    python scripts/convert_vizwiz_ru.py val_ru.json --images val/ --out data/vizwiz_ru/val.jsonl

Inputs, as github.com/Pstva/meme-captions has them (each file is one split; VizWiz's own
train/val split is by image already, so it is kept):
- VizWiz's annotation JSON (`data/raw/vizwiz/{train,val}.json`, COCO layout: `images` with
  `file_name`/`id`, `annotations` with `image_id`/`caption` and the flags `is_precanned`,
  `is_rejected`), with the captions translated;
- the translated table `data/raw/vizwiz_{train,val}_translated.csv`: comma-separated, header
  with `file_name` (without `.jpg`) and `text`;
- the final table `data/vizwiz/{train,val}.csv`: tab-separated, header `uid<TAB>text`.
VizWiz has five captions per image; they are grouped into one record per image. The stock
caption for unusable photos ("Quality issues are too severe to recognize visual content.",
`is_precanned`) and rejected captions are dropped, as the original did. Images come from
VizWiz's own site; rows whose image is not in `--images` are reported and left out.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memecap.data.convert import CaptionRow, drop_missing_images, group_by_image, write_jsonl  # noqa: E402

PRECANNED = "Quality issues are too severe to recognize visual content."


def _image_name(name: str) -> tuple[str, str]:
    uid = name[:-4] if name.lower().endswith((".jpg", ".png")) else name
    return uid, name if name != uid else f"{uid}.jpg"


def read_json(path: Path) -> list[CaptionRow]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise SystemExit(f"{path}: expected VizWiz's JSON layout with 'images' and 'annotations'")
    files = {img["id"]: img["file_name"] for img in data["images"]}
    rows = []
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}:annotations[{i}]"
        if ann.get("is_precanned") or ann.get("is_rejected") or ann.get("caption", "").strip() == PRECANNED:
            continue
        if ann.get("image_id") not in files:
            print(f"{where}: image_id {ann.get('image_id')!r} is not among the images, skipped", file=sys.stderr)
            continue
        uid, image = _image_name(files[ann["image_id"]])
        rows.append(CaptionRow(where, uid, image, ann.get("caption", "")))
    return rows


def read_table(path: Path) -> list[CaptionRow]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        delimiter = "\t" if "\t" in f.readline() else ","
        f.seek(0)
        reader = csv.DictReader(f, delimiter=delimiter)
        names = reader.fieldnames or []
        text = next((c for c in ("text", "caption") if c in names), None)
        key = next((c for c in ("uid", "file_name") if c in names), None)
        if text is None or key is None:
            raise SystemExit(f"{path}: header {names} has neither file_name,text nor uid<TAB>text")
        rows = []
        for record in reader:
            name = (record.get(key) or "").strip()
            if not name:
                print(f"{path}:{reader.line_num}: empty image name, row skipped", file=sys.stderr)
                continue
            if (record.get(text) or "").strip() == PRECANNED:
                continue
            uid, image = _image_name(name)
            rows.append(CaptionRow(f"{path}:{reader.line_num}", uid, image, record.get(text) or ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", type=Path, help="VizWiz JSON, or the translated .csv table")
    parser.add_argument("--images", type=Path, required=True, help="folder of this split's VizWiz images")
    parser.add_argument("--out", type=Path, required=True, help="output .jsonl table")
    args = parser.parse_args(argv)
    rows = read_json(args.table) if args.table.suffix.lower() == ".json" else read_table(args.table)
    records = drop_missing_images(group_by_image(rows), args.images, log=lambda m: print(m, file=sys.stderr))
    write_jsonl(args.out, records, args.images)
    print(f"{args.out}: {len(records)} images, {sum(len(r.captions) for r in records)} captions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
