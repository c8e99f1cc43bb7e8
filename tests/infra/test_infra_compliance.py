"""cdk-nag (AwsSolutions), cfn-lint and a real `npx cdk synth` without AWS credentials."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Annotations, Match
from cdk_template_view import SynthesizedStack
from cfnlint.api import ManualArgs, lint

pytestmark = pytest.mark.infra

REPO_ROOT = Path(__file__).resolve().parents[2]
NAG_RULE = Match.string_like_regexp("AwsSolutions-.*")

# cfn-lint rules ignored, each with its reason.
IGNORED_CFN_LINT_RULES: dict[str, str] = {
    # CDK adds an explicit DependsOn on the execution role next to the GetAtt of its ARN
    # (to order the role's policy before the function); redundant but harmless.
    "W3005": "redundant DependsOn that aws-cdk-lib emits for Lambda execution roles",
}
# Lint against the regions this is most likely deployed to (service availability differs).
CFN_LINT_REGIONS = ["us-east-1", "eu-west-1", "eu-central-1"]


@pytest.mark.parametrize("stack", ["cdp_stack", "cdp_stack_non_default"])
def test_cdk_nag_reports_no_unsuppressed_errors(stack: str, request: pytest.FixtureRequest) -> None:
    synthesized: SynthesizedStack = request.getfixturevalue(stack)
    errors = Annotations.from_stack(synthesized.stack).find_error("*", NAG_RULE)
    assert [(e.id, e.entry.data) for e in errors] == []


@pytest.mark.parametrize("stack", ["cdp_stack", "cdp_stack_non_default"])
def test_cdk_nag_reports_no_unsuppressed_warnings(stack: str, request: pytest.FixtureRequest) -> None:
    synthesized: SynthesizedStack = request.getfixturevalue(stack)
    warnings = Annotations.from_stack(synthesized.stack).find_warning("*", NAG_RULE)
    assert [(w.id, w.entry.data) for w in warnings] == []


def _suppressions(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [
        ("<stack>", rule)
        for rule in template.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
    ]
    for logical_id, resource in template["Resources"].items():
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            found.append((logical_id, rule))
    return found


def test_every_cdk_nag_suppression_has_a_specific_reason(cdp_stack: SynthesizedStack) -> None:
    suppressions = _suppressions(cdp_stack.json)
    assert suppressions, "expected the documented suppressions (L1, IAM5, APIG4, S1, SQS3)"
    for where, rule in suppressions:
        assert rule["id"].startswith("AwsSolutions-"), (where, rule)
        assert len(rule.get("reason", "").strip()) >= 40, f"{where}: {rule['id']} needs a specific reason"


def test_suppressions_are_scoped_to_resources_and_wildcard_findings(cdp_stack: SynthesizedStack) -> None:
    suppressions = _suppressions(cdp_stack.json)
    assert not [rule for where, rule in suppressions if where == "<stack>"], "no stack-wide suppressions"
    for where, rule in suppressions:
        if rule["id"] == "AwsSolutions-IAM5":  # never a blanket IAM5: name the wildcard
            assert rule.get("applies_to"), where
    assert {rule["id"] for _, rule in suppressions} == {
        "AwsSolutions-L1",
        "AwsSolutions-IAM5",
        "AwsSolutions-APIG4",
        "AwsSolutions-S1",
        "AwsSolutions-SQS3",
    }


@pytest.mark.parametrize("stack", ["cdp_stack", "cdp_stack_non_default"])
def test_cfn_lint_finds_no_errors_or_warnings(stack: str, request: pytest.FixtureRequest) -> None:
    synthesized: SynthesizedStack = request.getfixturevalue(stack)
    matches = lint(
        json.dumps(synthesized.json),
        config=ManualArgs(regions=CFN_LINT_REGIONS, ignore_checks=list(IGNORED_CFN_LINT_RULES)),
    )
    assert [str(match) for match in matches] == []


def test_npx_cdk_synth_succeeds_without_docker_or_aws_credentials(tmp_path: Path) -> None:
    if not (REPO_ROOT / "node_modules" / ".bin" / "cdk").exists():
        pytest.fail("The CDK CLI is not installed: run `npm ci` in the repository root (make test does).")
    npx = shutil.which("npx")
    assert npx, "Node.js (npx) is required for the CDK CLI"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_ACCESS_KEY", "AWS_SECRET", "AWS_SESSION", "AWS_PROFILE", "AWS_SECURITY"))
    }
    env.update({
        "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION": "1",
        "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
        # Nothing to ask AWS for; without this the SDK probes the EC2 metadata endpoint.
        "AWS_EC2_METADATA_DISABLED": "true",
    })  # fmt: skip
    outdir = tmp_path / "cdk.out"
    result = subprocess.run(
        [npx, "cdk", "synth", "--quiet", "--output", str(outdir)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    template = json.loads((outdir / "CdpStack.template.json").read_text())
    assert "AWS::Lambda::Function" in {resource["Type"] for resource in template["Resources"].values()}
