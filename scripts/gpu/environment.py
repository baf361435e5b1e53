"""The GPU kit's installer and environment check.

    python scripts/gpu/environment.py --json env.json     # the check alone (run.py runs it first)

install(): installs every wheel (or sdist) in scripts/gpu/wheels/ whose distribution is absent,
with no index and no dependency resolution (the set in wheels.txt is complete for memecap).
check(): the accelerator (name, memory, CUDA, bf16), each package memecap's modes import, and
whether bitsandbytes' kernels run on the device (4-bit quantize/dequantize and an 8-bit AdamW
step), each as data: a failing item is recorded, not raised.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import platform
import subprocess
import sys
from pathlib import Path

WHEELS = Path(__file__).resolve().parent / "wheels"
# import name -> distribution name, for every package a mode imports beside torch
PACKAGES = {"transformers": "transformers", "accelerate": "accelerate", "peft": "peft", "deepspeed": "deepspeed",
            "bitsandbytes": "bitsandbytes", "youtokentome": "youtokentome", "rudolph": "rudolph", "rudalle": "rudalle",
            "taming": "taming-transformers", "omegaconf": "omegaconf", "pywt": "PyWavelets", "einops": "einops",
            "datasets": "datasets", "evaluate": "evaluate", "nltk": "nltk", "sacrebleu": "sacrebleu"}


def distribution(path: Path) -> tuple[str, str]:
    """(name, version) of a wheel or sdist file, from its name."""
    stem = path.name[: -len(".tar.gz")] if path.name.endswith(".tar.gz") else path.name
    if path.suffix == ".whl":
        name, version = stem.split("-")[:2]
    else:
        name, version = stem.rsplit("-", 1)
    return name, version


def installed(name: str):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def install(wheels: Path = WHEELS) -> dict:
    """Install what is absent; returns {file: "installed" | "present (VERSION)"}; pip's failure raises."""
    files = sorted([*wheels.glob("*.whl"), *wheels.glob("*.tar.gz")])
    report, missing = {}, []
    for path in files:
        name, _ = distribution(path)
        have = installed(name)
        report[path.name] = f"present ({have})" if have else "installed"
        if not have:
            missing.append(str(path))
    if missing:  # sdists (youtokentome without a 3.12 wheel) build with the Cython already there
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                        "--disable-pip-version-check", *missing], check=True)
    return report


def accelerator() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, memory_gib=round(props.total_memory / 1024 ** 3, 1),
                    capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    else:
        info.update(device="cpu", memory_gib=None, bf16=None)
    return info


def packages() -> dict:
    out = {}
    for module, dist in PACKAGES.items():
        try:
            if module in ("rudolph", "rudalle"):  # memecap imports them through its shims (no torchvision)
                from memecap.models.rudolph.compat import import_rudolph

                import_rudolph()
            else:
                importlib.import_module(module)
            out[dist] = installed(dist) or "importable"
        except Exception as error:  # noqa: BLE001 - the check reports, run.py decides
            out[dist] = f"missing: {type(error).__name__}: {error}"[:200]
    try:
        import memecap.train  # noqa: F401

        out["memecap"] = "importable"
    except Exception as error:  # noqa: BLE001
        out["memecap"] = f"missing: {type(error).__name__}: {error}"[:200]
    return out


def bitsandbytes_kernels() -> str:
    """'ok (BACKEND)' when 4-bit quantization and an 8-bit AdamW step run on the device."""
    try:
        import torch

        import bitsandbytes as bnb
        import bitsandbytes.functional as F

        device = "cuda" if torch.cuda.is_available() else "cpu"
        x = torch.randn(128, 128, device=device)
        q, state = F.quantize_4bit(x, quant_type="nf4")
        err = (F.dequantize_4bit(q, state) - x).abs().mean().item()
        if not err < 0.2:
            return f"failed: 4-bit round trip error {err:.3f}"
        p = torch.nn.Parameter(torch.randn(4096, device=device))
        opt = bnb.optim.AdamW8bit([p], lr=1e-3)
        p.grad = torch.ones_like(p)
        before = p.detach().clone()
        opt.step()
        if not bool((p.detach() < before).all()):
            return "failed: the 8-bit AdamW step did not move the weights"
        return f"ok ({getattr(bnb.cextension, 'BNB_BACKEND', '?')}, {device})"
    except Exception as error:  # noqa: BLE001
        return f"failed: {type(error).__name__}: {error}"[:200]


def check() -> dict:
    return {**accelerator(), "packages": packages(), "bitsandbytes_kernels": bitsandbytes_kernels()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    args.json.write_text(json.dumps(check(), indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
