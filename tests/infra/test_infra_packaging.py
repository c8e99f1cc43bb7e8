"""Docker-free packaging: dependency layer from pyproject.toml, function folders without cdp.local/cli."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cdk_template_view import SynthesizedStack

from cdp import resources
from infra import packaging

pytestmark = pytest.mark.infra

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_layer_requirements_are_read_from_pyproject_dependencies() -> None:
    with (REPO_ROOT / "pyproject.toml").open("rb") as file:
        declared = tomllib.load(file)["project"]["dependencies"]
    assert packaging.runtime_dependencies() == declared


def test_layer_cache_key_changes_with_the_requirements_only() -> None:
    key = packaging.layer_cache_key(["a>=1", "b"])
    assert key == packaging.layer_cache_key(["b", "a>=1"])
    assert key != packaging.layer_cache_key(["a>=2", "b"])


def test_layer_holds_linux_arm64_cp313_wheels(cdp_stack: SynthesizedStack) -> None:
    python = packaging.BUILD_DIR / "layer" / "python"
    assert (python / "aws_lambda_powertools").is_dir()
    assert (python / "pydantic").is_dir()
    native = list((python / "pydantic_core").glob("_pydantic_core*.so"))
    assert native and all("cpython-313-aarch64-linux-gnu" in so.name for so in native), native
    assert not list(python.rglob("__pycache__"))
    assert not (python / "bin").exists()


def test_cached_layer_is_reused_without_running_pip(
    cdp_stack: SynthesizedStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pip(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pip ran although the layer was cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert packaging.build_layer() == packaging.BUILD_DIR / "layer"


def test_function_folder_ships_handler_and_cdp_without_local_cli_or_bytecode(tmp_path: Path) -> None:
    target = packaging.build_function(resources.COLLECTOR_FUNCTION.folder, build_dir=tmp_path)
    handlers = sorted(
        p.name for p in (REPO_ROOT / "functions" / resources.COLLECTOR_FUNCTION.folder).glob("*.py")
    )
    assert sorted(p.name for p in target.glob("*.py")) == handlers
    cdp = target / "cdp"
    assert (cdp / "__init__.py").is_file()
    assert (cdp / "resources.py").is_file()
    assert not (cdp / "local").exists()
    assert not (cdp / "cli").exists()
    assert not list(target.rglob("__pycache__"))
    assert not list(target.rglob("*.pyc"))
    shipped = {p.relative_to(cdp) for p in cdp.rglob("*.py")}
    source = REPO_ROOT / "shared" / "cdp"
    expected = {
        p.relative_to(source)
        for p in source.rglob("*.py")
        if p.relative_to(source).parts[0] not in packaging.EXCLUDED_CDP_PACKAGES
    }
    assert shipped == expected


def test_function_folder_is_rebuilt_from_scratch(tmp_path: Path) -> None:
    folder = resources.STREAM_CONSUMER_FUNCTION.folder
    stale = packaging.build_function(folder, build_dir=tmp_path) / "stale.py"
    stale.write_text("")
    assert not (packaging.build_function(folder, build_dir=tmp_path) / "stale.py").exists()


def test_missing_handler_folder_still_builds_the_cdp_package(tmp_path: Path) -> None:
    target = packaging.build_function("not_written_yet", build_dir=tmp_path)
    assert (target / "cdp" / "resources.py").is_file()
    assert not list(target.glob("*.py"))
