"""The GPU kit's results as OUT/results.json (everything) and OUT/results.md (the tables for
docs/benchmarks.md): the environment, then one row per training mode and per decoding mode."""
from __future__ import annotations

import json
from pathlib import Path

GIB = 1024 ** 3


def gib(value) -> str:
    return f"{value / GIB:.2f} GiB" if isinstance(value, (int, float)) else ""


def first_line(text: str) -> str:
    """A table cell holds one line: a CUDA error's advice lines would end the Markdown table."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def status(record: dict) -> str:
    if record["status"] == "ok":
        return "ok"
    return f"**{record['status']}**: {first_line(record.get('error', ''))}".replace("|", "/")


def environment_lines(env: dict, install) -> list[str]:
    if "error" in env:
        return [f"Environment check: **failed**: {env['error']}", ""]
    lines = ["| item | value |", "| --- | --- |"]
    for key in ("device", "memory_gib", "capability", "cuda", "torch", "python", "bf16", "bitsandbytes_kernels"):
        if env.get(key) is not None:
            lines.append(f"| {key} | {env[key]} |")
    for name, version in env.get("packages", {}).items():
        lines.append(f"| {name} | {str(version).replace('|', '/')} |")
    if install:
        installed = [f for f, what in install.items() if what == "installed"] if "error" not in install else []
        lines.append(f"| installed from wheels | {', '.join(installed) or install.get('error', 'nothing')} |")
    return [*lines, ""]


def train_lines(records: list[dict]) -> list[str]:
    lines = ["| mode | model | batch x tokens | max allocated | max reserved | step (median) | tokens/s | plan "
             "| measured / plan | target | status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        ok = r["status"] == "ok"
        step = f"{r['step_s'] * 1000:.0f} ms (of {r['timed']})" if ok else ""
        # plan estimates accelerator memory: a CPU's peak RSS (Python and torch included) is not comparable
        ratio = f"{r['allocated'] / r['plan']:.2f}" if ok and r.get("plan") and r["memory_kind"] == "cuda" else ""
        memory = f"{gib(r.get('allocated'))}{' RSS' if r.get('memory_kind') == 'peak RSS' else ''}" if ok else ""
        target = f"<= {r['target_gib']} GiB" if r.get("target_gib") else ""
        shape = f"| {r['mode']}: {r['what']} | {r.get('model', '')} | {r.get('batch', '')} x {r.get('tokens', '')} "
        lines.append(shape + f"| {memory} | {gib(r.get('reserved')) if ok else ''} | {step} "
                     f"| {r['tokens_per_s']:.0f} | {gib(r['plan'])} | {ratio} | {target} | {status(r)} |"
                     if ok else
                     shape + f"| | | | | | | {target} | {status(r)} |")
    return [*lines, ""]


def precision_lines(records: list[dict]) -> list[str]:
    """bf16 against fp32 step time of the same ClipCap, when both ran."""
    steps = {r["mode"]: r["step_s"] for r in records if r["status"] == "ok" and r["mode"].startswith("clipcap-small-")}
    if {"clipcap-small-fp32", "clipcap-small-bf16"} <= set(steps):
        return [f"ClipCap small step time, bf16 mixed precision / fp32: "
                f"{steps['clipcap-small-bf16'] / steps['clipcap-small-fp32']:.2f}", ""]
    return []


def generate_lines(records: list[dict]) -> list[str]:
    lines = ["| mode | model | batch x new tokens | captions/s | per batch (median) | precision | max allocated "
             "| status |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in records:
        if r["status"] == "ok":
            lines.append(f"| {r['mode']}: {r['what']} | {r['model']} | {r['batch']} x {r['tokens']} "
                         f"| {r['captions_per_s']:.1f} | {r['step_s'] * 1000:.0f} ms (of {r['timed']}) "
                         f"| {r['precision']} "
                         f"| {gib(r['allocated'])} | ok |")
        else:
            lines.append(f"| {r['mode']}: {r['what']} | {r.get('model', '')} | | | | | | {status(r)} |")
    return [*lines, ""]


def write_report(summary: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    env = summary.get("environment", {})
    title = f"GPU kit: {env.get('device', '?')}, {summary['date']}, {summary.get('wall_s', '?')} s in all"
    if summary["dry_run"]:
        title += " (CPU dry run: tiny shapes, peak = process RSS; not a measurement)"
    modes = summary["modes"]
    lines = [f"## {title}", "", *environment_lines(env, summary.get("install")),
             "Training (random-initialised models of the real shapes; step time after the warm-up steps):", "",
             *train_lines([r for r in modes if r["kind"] == "train"]), *precision_lines(modes),
             "Evaluation decoding (random weights: every caption runs to the token limit):", "",
             *generate_lines([r for r in modes if r["kind"] == "generate"])]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")
