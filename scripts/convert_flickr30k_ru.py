"""Convert the meme project's machine-translated Flickr30k (Russian) into memecap tables.

    python scripts/convert_flickr30k_ru.py flickr_data.csv --images flickr30k-images/ --out data/flickr30k_ru
    python scripts/convert_flickr30k_ru.py train.csv val.csv --images flickr30k-images/ --out data/flickr30k_ru

Inputs, as github.com/Pstva/meme-captions has them (any mix):
- the raw table `data/raw/flickr_data.csv`: comma-separated, header with `image_name`
  (`1000092795.jpg`) and `text` (one translated caption per row);
- its split tables `data/flickr/{train,val}[_full].csv`: tab-separated despite the name,
  header `uid<TAB>text`, uid = the image name without `.jpg`.
Flickr30k has five captions per image, one row each. The original split sampled rows, so the
same image landed in train and val; here rows are grouped by image first and whole images are
split (by a hash of the uid, `--val`/`--test` fractions). Images come from Flickr30k's own site
(`flickr30k-images/`); rows whose image is not in `--images` are reported and left out.
Writes `train.jsonl`, `val.jsonl` (and `test.jsonl`) in memecap's JSONL format, several captions
per image, ready for `data.train=` or a stage's `train:`.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memecap.data.convert import CaptionRow, drop_missing_images, group_by_image, split_by_image, write_jsonl  # noqa: E402


def read_rows(path: Path) -> list[CaptionRow]:
    """Rows of a raw (comma, image_name/text) or split (tab, uid/text) table, told apart by the header."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        header = f.readline()
        delimiter = "\t" if "\t" in header else ","
        f.seek(0)
        reader = csv.DictReader(f, delimiter=delimiter)
        names = reader.fieldnames or []
        if "text" not in names or not ({"image_name", "uid"} & set(names)):
            raise SystemExit(f"{path}: header {names} has neither image_name,text nor uid<TAB>text")
        rows = []
        for record in reader:
            line = reader.line_num
            name = (record.get("image_name") or record.get("uid") or "").strip()
            if not name:
                print(f"{path}:{line}: empty image name, row skipped", file=sys.stderr)
                continue
            uid = name[:-4] if name.lower().endswith(".jpg") else name
            rows.append(CaptionRow(f"{path}:{line}", uid, f"{uid}.jpg", record.get("text") or ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tables", nargs="+", type=Path, help="flickr_data.csv and/or train.csv/val.csv")
    parser.add_argument("--images", type=Path, required=True, help="folder of Flickr30k's jpg files")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the JSONL tables")
    parser.add_argument("--val", type=float, default=0.1, help="share of images in val (default 0.1)")
    parser.add_argument("--test", type=float, default=0.0, help="share of images in test (default 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    args = parser.parse_args(argv)
    rows = [row for table in args.tables for row in read_rows(table)]
    records = drop_missing_images(group_by_image(rows), args.images, log=lambda m: print(m, file=sys.stderr))
    fractions = {"train": 1 - args.val - args.test, "val": args.val, **({"test": args.test} if args.test else {})}
    for split, part in split_by_image(records, fractions, seed=args.seed).items():
        write_jsonl(args.out / f"{split}.jsonl", part, args.images)
        print(f"{args.out / f'{split}.jsonl'}: {len(part)} images, {sum(len(r.captions) for r in part)} captions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
