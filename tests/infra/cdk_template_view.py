"""Read-only helpers over a synthesized CloudFormation template, for the infra tests."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from aws_cdk import App, Stack
from aws_cdk.assertions import Template


@dataclass
class SynthesizedStack:
    app: App
    stack: Stack

    @cached_property
    def template(self) -> Template:
        return Template.from_stack(self.stack)

    @cached_property
    def json(self) -> dict[str, Any]:
        return dict(self.template.to_json())

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return dict(self.json["Resources"])

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        """Logical id -> resource, for every resource of the type."""
        return {lid: res for lid, res in self.resources.items() if res["Type"] == resource_type}

    def props(self, logical_id: str) -> dict[str, Any]:
        return dict(self.resources[logical_id].get("Properties", {}))

    def ref_target(self, value: Any) -> str:
        """Logical id named by a {"Ref": id} or {"Fn::GetAtt": [id, attr]}."""
        if "Ref" in value:
            return str(value["Ref"])
        return str(value["Fn::GetAtt"][0])

    def role_of(self, function_id: str) -> str:
        return self.ref_target(self.props(function_id)["Role"])

    def statements_of_role(self, role_id: str) -> list[dict[str, Any]]:
        """Every statement of every identity policy attached to the role (inline or AWS::IAM::Policy)."""
        statements: list[dict[str, Any]] = []
        for policy in self.props(role_id).get("Policies", []):
            statements.extend(policy["PolicyDocument"]["Statement"])
        for policy in self.of_type("AWS::IAM::Policy").values():
            if {"Ref": role_id} in policy["Properties"].get("Roles", []):
                statements.extend(policy["Properties"]["PolicyDocument"]["Statement"])
        return statements

    def grants_of_role(self, role_id: str) -> dict[str, set[str]]:
        """Action -> the resources it is allowed on, each rendered as a short string.

        ``{"Fn::GetAtt": ["X", "Arn"]}`` renders as ``X.Arn``, a join of it and ``/*`` as
        ``X.Arn/*``, ``"*"`` stays ``*``.
        """
        grants: dict[str, set[str]] = {}
        for statement in self.statements_of_role(role_id):
            assert statement["Effect"] == "Allow", statement
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            resources = (
                statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            )
            for action in actions:
                grants.setdefault(action, set()).update(render(resource) for resource in resources)
        return grants

    def output_target(self, name: str) -> str:
        return self.ref_target(self.json["Outputs"][name]["Value"])


def render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return f"{value['Ref']}.Ref"
    if "Fn::GetAtt" in value:
        logical_id, attribute = value["Fn::GetAtt"]
        return f"{logical_id}.{attribute}"
    if "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(render(part) for part in parts)
    raise AssertionError(f"unexpected policy resource {value!r}")
