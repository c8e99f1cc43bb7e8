"""Build the Lambda assets without Docker.

* One dependency layer: ``pip install --platform manylinux2014_aarch64 --only-binary=:all:``
  of ``[project].dependencies`` from pyproject.toml into ``.build/layer/python``. It is
  cached under a hash of the requirement list and the target platform, so repeat synths
  are fast and work offline.
* One folder per function: ``.build/functions/<folder>/`` holds ``functions/<folder>/*.py``
  next to a copy of the ``cdp`` package, minus ``cdp/local`` and ``cdp/cli`` (they need
  moto and click, which are not shipped).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUILD_DIR = REPO_ROOT / ".build"

# Must match the Lambda runtime and architecture chosen in infra/constructs/function.py.
LAYER_PLATFORM = "manylinux2014_aarch64"
LAYER_PYTHON_VERSION = "3.13"
LAYER_IMPLEMENTATION = "cp"

# Sub-packages of cdp that only the local stack and the CLI use.
EXCLUDED_CDP_PACKAGES = frozenset({"local", "cli"})


@dataclass(frozen=True)
class LambdaAssets:
    """Folders ready for ``Code.from_asset``."""

    layer_dir: Path  # contains python/, the layout Lambda layers expect
    function_dirs: dict[str, Path]  # keyed by FunctionSpec.folder


def runtime_dependencies(pyproject: Path = REPO_ROOT / "pyproject.toml") -> list[str]:
    """The ``[project].dependencies`` of pyproject.toml: the single list of what Lambdas need."""
    with pyproject.open("rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


def layer_cache_key(dependencies: Iterable[str]) -> str:
    """Hash of everything that decides the layer's content."""
    material = {
        "dependencies": sorted(dependencies),
        "platform": LAYER_PLATFORM,
        "python_version": LAYER_PYTHON_VERSION,
        "implementation": LAYER_IMPLEMENTATION,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def build_layer(build_dir: Path = BUILD_DIR, dependencies: list[str] | None = None) -> Path:
    """Return ``<build_dir>/layer`` (containing ``python/``), building it only if the key changed."""
    dependencies = runtime_dependencies() if dependencies is None else dependencies
    key = layer_cache_key(dependencies)
    layer_dir = build_dir / "layer"
    # The stamp lives outside the layer folder so it is not shipped.
    stamp = build_dir / "layer.sha256"
    if layer_dir.joinpath("python").is_dir() and stamp.is_file() and stamp.read_text().strip() == key:
        return layer_dir

    build_dir.mkdir(parents=True, exist_ok=True)
    staging = build_dir / f"layer.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--platform", LAYER_PLATFORM,
        "--implementation", LAYER_IMPLEMENTATION,
        "--python-version", LAYER_PYTHON_VERSION,
        "--only-binary=:all:",
        # .pyc files compiled by the build interpreter would not match the 3.13 runtime.
        "--no-compile",
        "--target", str(staging / "python"),
        *dependencies,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(
            "Building the Lambda dependency layer failed (is PyPI reachable?):\n"
            f"{' '.join(command)}\n{result.stdout}\n{result.stderr}"
        )
    # Console scripts carry the build machine's interpreter path; useless in Lambda.
    shutil.rmtree(staging / "python" / "bin", ignore_errors=True)
    _remove_bytecode(staging)

    stamp.unlink(missing_ok=True)
    shutil.rmtree(layer_dir, ignore_errors=True)
    staging.rename(layer_dir)
    stamp.write_text(key + "\n")
    return layer_dir


def build_function(folder: str, build_dir: Path = BUILD_DIR, repo_root: Path = REPO_ROOT) -> Path:
    """Assemble ``<build_dir>/functions/<folder>/``: the handler module(s) plus the cdp package.

    Rebuilt on every synth (it is small); CDK fingerprints the content, so an unchanged
    function keeps its asset hash and is not redeployed.
    """
    target = build_dir / "functions" / folder
    staging = build_dir / "functions" / f".{folder}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    source = repo_root / "functions" / folder
    if source.is_dir():  # the handler may not exist yet while the team builds it
        for module in sorted(source.glob("*.py")):
            shutil.copy2(module, staging / module.name)

    cdp_source = repo_root / "shared" / "cdp"

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {name for name in names if name == "__pycache__" or name.endswith((".pyc", ".pyo"))}
        if Path(directory) == cdp_source:
            skipped |= EXCLUDED_CDP_PACKAGES.intersection(names)
        return skipped

    shutil.copytree(cdp_source, staging / "cdp", ignore=ignore)

    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def with_files(code_dir: Path, files: dict[str, str], build_dir: Path = BUILD_DIR) -> Path:
    """A copy of a built function folder with extra files (the deployment's destinations
    configuration beside the handler), in ``<build_dir>/configured/<content hash>/``: the
    asset changes, and the function is redeployed, exactly when the files change."""
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    target = build_dir / "configured" / f"{code_dir.name}-{digest}"
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(code_dir, staging)
    for name, text in files.items():
        (staging / name).write_text(text, encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def build_assets(folders: Iterable[str], build_dir: Path = BUILD_DIR) -> LambdaAssets:
    """Build (or reuse) the layer and build every function folder."""
    return LambdaAssets(
        layer_dir=build_layer(build_dir),
        function_dirs={folder: build_function(folder, build_dir) for folder in folders},
    )


def _remove_bytecode(root: Path) -> None:
    for cache in list(root.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
