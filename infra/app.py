"""The CDK app: ``npx cdk synth`` runs ``.venv/bin/python infra/app.py`` (see cdk.json)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts infra/ first on sys.path, where infra/constructs/ would
# shadow the `constructs` library that aws_cdk imports. Import from the repo root instead.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != REPO_ROOT / "infra"]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from aws_cdk import App, Aspects, Tags  # noqa: E402
from cdk_nag import AwsSolutionsChecks  # noqa: E402

from infra.stack import CdpStack  # noqa: E402

STACK_NAME = "CdpStack"


def create_app(context: Mapping[str, Any] | None = None, outdir: str | None = None) -> tuple[App, CdpStack]:
    """Build the app with cdk-nag applied; tests call this with cdk.json's context."""
    app = App(context=dict(context) if context is not None else None, outdir=outdir)
    stack = CdpStack(
        app,
        STACK_NAME,
        description="Serverless customer data platform (CDP): collector API, event stream and pipeline",
    )
    Tags.of(stack).add("project", "cdp")
    # Every finding must be fixed or suppressed with a written reason next to the resource.
    Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return app, stack


def main() -> None:
    app, _ = create_app()
    app.synth()


if __name__ == "__main__":
    main()
