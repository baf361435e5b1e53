"""memecap's GPU evidence kit: install what is missing, check the machine, measure every mode.

    bash scripts/gpu/prepare_wheels.sh               # once, where the package index is reachable
    python3 scripts/gpu/run.py                        # on the GPU machine (no network needed): < 9 minutes
    python3 scripts/gpu/run.py --cpu-dry-run          # the same code path with tiny shapes on a CPU
    python3 scripts/gpu/run.py --only rudolph-350m --set rudolph-350m train.batch_size=8

Installs the wheels in scripts/gpu/wheels/ whose packages are absent, checks the environment
(environment.py), then runs each mode of modes.py in priority order, each in its own process
(measure.py; DeepSpeed modes under `accelerate launch`) with its time budget and within the
run's time limit: a mode that fails or runs out of time is recorded with its error and the rest
go on. After every mode, OUT/results.json and OUT/results.md hold everything so far.
memecap is imported from this working tree (PYTHONPATH), not installed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from environment import WHEELS, install  # noqa: E402
from modes import DRY_RUN_TIME_LIMIT_S, MODES, TIME_LIMIT_S, Mode, tiny  # noqa: E402
from report import write_report  # noqa: E402


def child_env() -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("ACCELERATE_USE_CPU", None)  # with it set, a DeepSpeed mode on a CPU does not start
    return env


def run_process(cmd: list[str], log: Path, timeout: float) -> tuple[int | None, float]:
    """Return code (None when killed at `timeout`) and wall seconds; output goes to `log`."""
    start = time.monotonic()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own group: a timeout ends launcher and workers
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    return code, time.monotonic() - start


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def run_mode(mode: Mode, out: Path, dry_run: bool, overrides: list[str], timeout: float) -> dict:
    work, result, log = out / "work" / mode.name, out / "modes" / f"{mode.name}.json", out / "logs" / f"{mode.name}.log"
    shutil.rmtree(work, ignore_errors=True)  # a rerun measures afresh, in a run folder of its own
    for folder in (work, result.parent, log.parent):
        folder.mkdir(parents=True, exist_ok=True)
    result.unlink(missing_ok=True)
    args = [mode.name, "--work", str(work), "--result", str(result), *(["--dry-run"] if dry_run else [])]
    args += [f"--set={o}" for o in overrides]
    cmd = [sys.executable, str(HERE / "measure.py"), *args]
    if mode.accelerate:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "accelerate_configs" / mode.accelerate), "--num_processes", "1", str(HERE / "measure.py"),
               *args]
    record = {"mode": mode.name, "what": mode.what, "kind": mode.kind, "model": f"{mode.family} {mode.shape}",
              "batch": mode.batch, "tokens": mode.tokens, "target_gib": mode.target_gib, "budget_s": round(timeout),
              "started": stamp()}
    code, wall = run_process(cmd, log, timeout)
    record.update(ended=stamp(), wall_s=round(wall, 1))
    if result.is_file():
        record.update(json.loads(result.read_text(encoding="utf-8")))
    if code is None:
        record.update(status="failed", error=f"over its {timeout:.0f} s budget")
    elif record.get("status") != "ok":
        record.update(status="failed", error=record.get("error") or f"exit {code}: {last_line(log)}")
    return record


def stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_environment(out: Path, timeout: float) -> dict:
    log, target = out / "logs" / "environment.log", out / "environment.json"
    log.parent.mkdir(parents=True, exist_ok=True)
    code, _ = run_process([sys.executable, str(HERE / "environment.py"), "--json", str(target)], log, timeout)
    if target.is_file():
        return json.loads(target.read_text(encoding="utf-8"))
    return {"error": f"the check {'ran out of time' if code is None else 'failed'}: {last_line(log)}"}


def attempt(mode: Mode, out: Path, args: argparse.Namespace, deadline: float) -> dict:
    left = deadline - time.monotonic()
    if left < 15:  # too little to start a model: recorded, so the table says what was not measured
        return {"mode": mode.name, "what": mode.what, "kind": mode.kind, "status": "skipped",
                "error": "the run's time limit was reached"}
    overrides = [kv for name, kv in args.set if name == mode.name]
    return run_mode(mode, out, args.cpu_dry_run, overrides, min(mode.budget_s, left))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="every mode with tiny shapes on the CPU")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu_kit")
    parser.add_argument("--only", nargs="+", choices=[m.name for m in MODES], help="these modes, in the order given")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("MODE", "KEY=VALUE"),
                        help="a memecap override for one mode (repeatable)")
    parser.add_argument("--time-limit", type=float, help="seconds for the whole run; modes that no longer fit are "
                        f"skipped (default {TIME_LIMIT_S}, {DRY_RUN_TIME_LIMIT_S} for a dry run)")
    parser.add_argument("--no-install", action="store_true", help=f"do not install the wheels in {WHEELS}")
    parser.add_argument("--jobs", type=int, default=1, help="dry run only: modes run at once (each uses one thread)")
    args = parser.parse_args(argv)
    if args.jobs > 1 and not args.cpu_dry_run:
        parser.error("--jobs: GPU measurements run one at a time (they share the GPU's memory and time)")
    known = {m.name for m in MODES}
    for name, _ in args.set:
        if name not in known:
            parser.error(f"--set {name}: no such mode; modes: {', '.join(sorted(known))}")
    return args


def selected(only) -> list[Mode]:
    """The modes of `--only` in the order given (a short loan measures what matters now first), else all."""
    if not only:
        return list(MODES)
    by_name = {m.name: m for m in MODES}
    return [by_name[name] for name in dict.fromkeys(only)]


def main(argv=None) -> int:
    args = parse_args(argv)
    args.time_limit = args.time_limit or (DRY_RUN_TIME_LIMIT_S if args.cpu_dry_run else TIME_LIMIT_S)
    if args.cpu_dry_run:  # tiny models gain nothing from threads, and --jobs modes share the cores
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    start = time.monotonic()
    deadline = start + args.time_limit
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    summary = {"dry_run": args.cpu_dry_run, "date": stamp(), "time_limit_s": args.time_limit, "modes": []}
    if not args.no_install and not args.cpu_dry_run and WHEELS.is_dir():
        try:
            summary["install"] = install(WHEELS)
        except subprocess.CalledProcessError as error:
            summary["install"] = {"error": str(error)}
    summary["environment"] = check_environment(out, timeout=120)
    print(f"environment: {summary['environment'].get('device', summary['environment'])}", flush=True)
    modes = [tiny(m) if args.cpu_dry_run else m for m in selected(args.only)]
    # A GPU measurement has the machine to itself; dry-run modes are single-threaded and may share the CPU.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        pending = [pool.submit(attempt, mode, out, args, deadline) for mode in modes]
        for mode, future in zip(modes, pending):  # recorded in priority order, as each is done
            record = future.result()
            summary["modes"].append(record)
            summary["wall_s"] = round(time.monotonic() - start)
            error = f" - {record['error']}" if record.get("error") else ""
            print(f"{mode.name}: {record['status']}{error}", flush=True)
            write_report(summary, out)
    write_report(summary, out)
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
