"""One self-contained HTML page to read a model's captions: every image beside its generated and
reference captions with per-example scores, sorting and filtering, the corpus metrics, and the
training curves. Images are embedded as small JPEG thumbnails, so the page can be mailed or
opened anywhere offline.

    memecap report runs/x/predictions/step_0000500.jsonl --images data/images --out report.html
"""
from __future__ import annotations

import base64
import io
import json
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from memecap.data.images import ImageReadError, load_rgb
from memecap.evaluation import compute_metrics, example_scores, read_predictions
from memecap.metrics import registry
from memecap.outputs.file_names import shown
from memecap.inference.exported import IMAGE_SUFFIXES
from memecap.publish.svg_chart import line_chart

if TYPE_CHECKING:
    from memecap.compare import Comparison

CURVE_METRICS = ("bleu1", "bleu4", "meteor")
# Marks a page as ours, so `--out` may replace it; any other file there is left alone.
GENERATOR = '<meta name="generator" content="memecap report">'
OLD_PAGE_START = '<!DOCTYPE html>\n<html lang="ru"><head><meta charset="utf-8"><title>memecap report'

STYLE = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 22px; margin: 0 0 4px; } .sub { color: #666; margin-bottom: 16px; }
table.metrics { border-collapse: collapse; margin: 8px 0 16px; }
table.metrics td, table.metrics th { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; margin-bottom: 16px; }
.chart { background: #fff; border: 1px solid #ddd; }
.controls { position: sticky; top: 0; background: #fafafa; padding: 8px 0; border-bottom: 1px solid #ddd;
            display: flex; gap: 16px; align-items: center; flex-wrap: wrap; z-index: 1; }
.example { display: flex; gap: 16px; background: #fff; border: 1px solid #ddd; border-radius: 6px;
           padding: 12px; margin: 12px 0; }
.example img { width: 240px; height: auto; object-fit: contain; border: 1px solid #eee; flex: none; }
.missing { width: 240px; height: 160px; display: flex; align-items: center; justify-content: center;
           background: #eee; color: #888; flex: none; }
.uid { color: #888; font-size: 12px; } .label { font-weight: bold; color: #555; font-size: 12px; }
.generated { font-size: 15px; margin: 2px 0 8px; } .reference { color: #333; margin: 2px 0 6px; }
.before { color: #666; margin: 2px 0 8px; }
.scores { font-size: 13px; color: #444; } .scores b { color: #000; }
"""

SCRIPT = """
const list = document.getElementById('examples');
const items = Array.from(list.children);
function apply() {
  const key = document.getElementById('sort').value;
  const [field, order] = key.split(':');
  const min = parseFloat(document.getElementById('min').value);
  const text = document.getElementById('search').value.toLowerCase();
  document.getElementById('min-value').textContent = min.toFixed(2);
  const sorted = items.slice().sort((a, b) => {
    const x = field === 'uid' ? a.dataset.uid : parseFloat(a.dataset[field]);
    const y = field === 'uid' ? b.dataset.uid : parseFloat(b.dataset[field]);
    return (x < y ? -1 : x > y ? 1 : 0) * (order === 'desc' ? -1 : 1);
  });
  let shown = 0;
  for (const el of sorted) {
    // the min-score filter reads BLEU-4 unless another higher-is-better score is the sort key
    const score = parseFloat(el.dataset[field === 'meteor' ? 'meteor' : 'bleu4']);
    const visible = (isNaN(score) || score >= min) && (!text || el.textContent.toLowerCase().includes(text));
    el.style.display = visible ? '' : 'none';
    shown += visible ? 1 : 0;
    list.appendChild(el);
  }
  document.getElementById('shown').textContent = shown + ' of ' + items.length + ' shown';
}
for (const id of ['sort', 'min', 'search']) document.getElementById(id).addEventListener('input', apply);
apply();
"""


def thumbnail_data_uri(path: Path, max_side: int = 360) -> Optional[str]:
    try:
        img = load_rgb(path)
    except ImageReadError:
        return None
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def inside(root: Path, name: str) -> Optional[Path]:
    """`root / name` when `name` is a relative path that stays inside `root`, else None: a
    predictions file from elsewhere must not embed `/etc/...` or `../../` files into a page that
    is then mailed around. Checked on the name, so a symlinked images folder still works."""
    path = Path(name)
    if not name or path.is_absolute() or path.anchor or ".." in path.parts:
        return None
    return root / path


def find_image(images_dir: Optional[Path], row: dict, base: Path) -> tuple[Optional[Path], bool]:
    """A row's image and whether a path was refused for leaving the images folder: its own
    `image` path (captions files), else `<images_dir>/<uid>.<ext>`; both only inside
    `images_dir` (or, without one, the predictions file's folder)."""
    refused = False
    if row.get("image"):
        candidate = inside(images_dir or base, str(row["image"]))
        refused = candidate is None
        if candidate is not None and candidate.is_file():
            return candidate, False
    if images_dir is not None and "uid" in row:
        for suffix in sorted(IMAGE_SUFFIXES):
            candidate = inside(images_dir, f"{row['uid']}{suffix}")
            if candidate is None:
                return None, True
            if candidate.is_file():
                return candidate, False
    return None, refused


def read_rows(path: Path) -> list[dict]:
    """Predictions (`uid`, `references`, `prediction`) or captions (`image`, `caption`) lines."""
    rows = read_predictions(path)
    for number, row in enumerate(rows, 1):
        if "prediction" not in row and "caption" in row:
            row["prediction"] = row["caption"]
        if "prediction" not in row:
            raise ValueError(f"{path}:{number}: neither a prediction nor a caption in this line")
        row.setdefault("uid", row.get("image", str(number)))
    return rows


def training_curves(log_path: Optional[Path]) -> list[str]:
    if log_path is None or not log_path.is_file():
        return []
    records = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and "loss" in r]
    evals = [r for r in records if r.get("kind") == "eval"]
    charts = [line_chart({"train loss": train,
                          "val loss": [(r["step"], r["val_loss"]) for r in evals if "val_loss" in r]},
                         title="loss"),
              line_chart({m: [(r["step"], r[m]) for r in evals if m in r] for m in CURVE_METRICS},
                         title="validation metrics")]
    return [c for c in charts if c]


def render_report(rows: list[dict], *, images_dir: Optional[Path], base: Path, title: str,
                  log_path: Optional[Path] = None, scoring: str = "memecap", max_side: int = 360,
                  comparison: Optional["Comparison"] = None) -> tuple[str, dict]:
    """The HTML page and a summary (`examples`, `images_missing`, `metrics`). With a `comparison`
    (`memecap compare` of an earlier predictions file against these), each example shows its
    earlier caption and how its score moved."""
    scored = all(row.get("references") for row in rows) and bool(rows)
    metrics = per_example = None
    if scored:
        predictions, references = [r["prediction"] for r in rows], [list(r["references"]) for r in rows]
        metrics = compute_metrics(predictions, references, scoring=scoring)
        per_example = example_scores(predictions, references, scoring=scoring)
    comparison_by_uid = {c.uid: c for c in comparison.changes} if comparison is not None else {}
    cards, missing, refused = [], 0, 0
    for i, row in enumerate(rows):
        image, outside = find_image(images_dir, row, base)
        refused += outside
        uri = thumbnail_data_uri(image, max_side) if image else None
        missing += uri is None
        scores = per_example[i] if per_example else {}
        picture = (f'<img src="{uri}" alt="{escape(shown(str(row["uid"])))}">' if uri
                   else '<div class="missing">image not found</div>')
        refs = "".join(f'<div class="reference">{escape(r)}</div>' for r in row.get("references") or [])
        alts = "".join(f'<div class="reference">{escape(a)}</div>' for a in row.get("alternatives") or [])
        quote = scores.get("quote")
        change = comparison_by_uid.get(str(row["uid"]))
        moved = (f' · {escape(registry.label(comparison.by))} <b>{change.before:.2f} &rarr; {change.after:.2f}</b> '
                 f'({change.after - change.before:+.2f})' if change else "")
        score_line = (f'<div class="scores">BLEU-4 <b>{scores["bleu4"]:.3f}</b> · METEOR <b>{scores["meteor"]:.3f}</b>'
                      + (f' · quote CER <b>{quote:.3f}</b>' if quote is not None else "") + moved + "</div>"
                      if scores else "")
        earlier = (f'<div class="label">before ({escape(shown(comparison.before.name))})</div>'
                   f'<div class="before">{escape(change.before_caption)}</div>' if change else "")
        cards.append(
            f'<div class="example" data-uid="{escape(shown(str(row["uid"])))}" '
            f'data-bleu4="{scores.get("bleu4", "NaN")}" data-meteor="{scores.get("meteor", "NaN")}" '
            f'data-quote="{"NaN" if quote is None else quote}" '
            f'data-gain="{comparison.improvement(change) if change else "NaN"}">{picture}<div>'
            f'<div class="uid">{escape(shown(str(row["uid"])))}</div>'
            f'<div class="label">generated</div><div class="generated">{escape(row["prediction"])}</div>'
            + earlier
            + (f'<div class="label">other candidates</div>{alts}' if alts else "")
            + (f'<div class="label">reference{"s" if len(row.get("references") or []) > 1 else ""}</div>{refs}'
               if refs else "")
            + f"{score_line}</div></div>")
    metrics_html = ""
    if metrics:
        names = list(metrics)
        metrics_html = ('<table class="metrics"><tr>' + "".join(f"<th>{escape(n)}</th>" for n in names) + "</tr><tr>"
                        + "".join(f"<td>{metrics[n]:.4f}</td>" for n in names) + "</tr></table>"
                        f'<div class="sub">corpus BLEU, mean METEOR'
                        f'{", CIDEr-D (x10), ROUGE-L" if "cider" in metrics else ""} '
                        f'and mean quote CER (lower is better) over {len(rows)} '
                        f"examples ({scoring} scoring); per-example BLEU-4 is add-one smoothed</div>")
    charts = training_curves(log_path)
    sort_options = ([("bleu4:desc", "BLEU-4, best first"), ("bleu4:asc", "BLEU-4, worst first"),
                     ("meteor:desc", "METEOR, best first"), ("meteor:asc", "METEOR, worst first"),
                     ("quote:asc", "quote CER, best first"), ("quote:desc", "quote CER, worst first")]
                    if scored else [])
    if comparison is not None:
        name = registry.label(comparison.by)
        sort_options[:0] = [("gain:desc", f"{name} change, most improved first"),
                            ("gain:asc", f"{name} change, most worsened first")]
    sort_options.append(("uid:asc", "id"))
    options = "".join(f'<option value="{v}">{escape(t)}</option>' for v, t in sort_options)
    html = f"""<!DOCTYPE html>
<html lang="ru"><head><meta charset="utf-8">{GENERATOR}<title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body>
<h1>{escape(title)}</h1>
<div class="sub">{len(rows)} examples{f", {missing} without an image" if missing else ""}</div>
{metrics_html}
{comparison_table(comparison) if comparison is not None else ""}
{'<div class="charts">' + "".join(charts) + "</div>" if charts else ""}
<div class="controls">
<label>sort <select id="sort">{options}</select></label>
<label>min score <input id="min" type="range" min="0" max="1" step="0.01" value="0"{"" if scored else " disabled"}>
<span id="min-value">0.00</span></label>
<label>find <input id="search" type="search" placeholder="text in captions"></label>
<span id="shown"></span>
</div>
<div id="examples">
{chr(10).join(cards)}
</div>
<script>{SCRIPT}</script>
</body></html>
"""
    return html, {"examples": len(rows), "images_missing": missing, "images_refused": refused, "metrics": metrics}


def comparison_table(comparison: "Comparison") -> str:
    """Every score before and after with its interval and verdict, as `memecap compare` prints them."""
    head = ("score", "before", "after", "gain", f"{comparison.level:.0%} interval", "")
    rows = "".join(
        f"<tr><td>{escape(registry.label(m.name))}</td><td>{m.gain.before:.4f}</td><td>{m.gain.after:.4f}</td>"
        f"<td>{m.gain.gain:+.4f}</td><td>{m.gain.low:+.4f} .. {m.gain.high:+.4f}</td><td>{escape(m.verdict)}</td></tr>"
        for m in comparison.metrics)
    return (f'<div class="sub">against {escape(shown(str(comparison.before)))}, paired over {comparison.memes} memes '
            f'({comparison.resamples:,} bootstrap resamples)</div><table class="metrics comparison"><tr>'
            + "".join(f"<th>{escape(h)}</th>" for h in head) + f"</tr>{rows}</table>")


def write_report(predictions: Path, out: Path, *, images_dir: Optional[Path] = None, log_path: Optional[Path] = None,
                 title: Optional[str] = None, scoring: str = "memecap", compare: Optional[Path] = None) -> dict:
    """Write the report for a predictions or captions file. The training log defaults to the
    run's `log.jsonl` when the predictions sit in a run's `predictions/` folder. `compare`: an
    earlier predictions file of the same table, shown beside these meme by meme (`memecap compare`)."""
    from memecap.compare import compare_predictions

    predictions = Path(predictions)
    if log_path is None and predictions.parent.name == "predictions":
        log_path = predictions.parent.parent / "log.jsonl"
    refuse_foreign_page(Path(out))  # before minutes of scoring
    rows = read_rows(predictions)
    if not rows:
        raise ValueError(f"{predictions}: no rows to report")
    comparison = (compare_predictions(Path(compare), [predictions], scoring=scoring, show=0)
                  if compare is not None else None)
    html, summary = render_report(rows, images_dir=Path(images_dir) if images_dir else None, base=predictions.parent,
                                  title=title or f"memecap report: {shown(predictions.name)}", log_path=log_path,
                                  scoring=scoring, comparison=comparison)
    out = Path(out)
    refuse_foreign_page(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return summary


def refuse_foreign_page(out: Path) -> None:
    """`--out` may name a new file or a page this module wrote, never anything else (the
    predictions file itself, an image, a document)."""
    if not out.exists():
        return
    if not out.is_file():
        raise ValueError(f"{out}: not a file; --out names the HTML page to write")
    with open(out, "rb") as f:
        head = f.read(4096).decode("utf-8", "replace")
    if GENERATOR not in head and not head.startswith(OLD_PAGE_START):
        raise ValueError(f"{out}: exists and is not a page of `memecap report`; it was left unchanged: "
                         "pass another --out, or remove the file if it is yours to lose")
