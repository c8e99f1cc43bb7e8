"""A Lambda function built from a ``FunctionSpec``, with its own role and log group."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from cdk_nag import NagSuppressions
from constructs import Construct

from cdp.resources import FunctionSpec

# The runtime and architecture the dependency layer is built for (infra/packaging.py).
RUNTIME = lambda_.Runtime.PYTHON_3_13
ARCHITECTURE = lambda_.Architecture.ARM_64

# Every function logs and emits metrics under the same service and namespace
# (cdp.observability uses the same names).
COMMON_ENVIRONMENT: dict[str, str] = {
    "POWERTOOLS_SERVICE_NAME": "cdp",
    "POWERTOOLS_METRICS_NAMESPACE": "CDP",
    "LOG_LEVEL": "INFO",
}


class CdpFunction(Construct):
    """Python 3.13 on arm64 (cheaper per GB-second), X-Ray active, explicit log group.

    The role starts empty: only its own log group is writable; callers add exactly the
    data-plane permissions the function needs through grants.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        spec: FunctionSpec,
        code_dir: Path,
        layer: lambda_.ILayerVersion,
        environment: Mapping[str, str],
        log_retention: logs.RetentionDays,
        role: iam.Role | None = None,
    ) -> None:
        super().__init__(scope, construct_id)

        # Operational logs: bounded by retention; the data of record lives in the
        # retained tables and bucket, so the group goes with the stack.
        self.log_group = logs.LogGroup(
            self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        # Own role instead of the default one: no AWSLambdaBasicExecutionRole managed
        # policy (which may write to any log group), nothing shared between functions.
        # (``role``: a role shared on purpose, e.g. a destination's queue and sync functions,
        # which must reach exactly the same secret and API.)
        self.role = role or iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"{spec.logical_id}: {spec.purpose}"[:1000],
        )
        self.function = lambda_.Function(
            self,
            "Function",
            description=spec.purpose[:256],
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler="handler.handler",
            code=lambda_.Code.from_asset(str(code_dir)),
            layers=[layer],
            memory_size=spec.memory_mb,
            timeout=Duration.seconds(spec.timeout_s),
            tracing=lambda_.Tracing.ACTIVE,
            log_group=self.log_group,
            role=self.role,
            environment={**COMMON_ENVIRONMENT, **environment},
        )
        self.log_group.grant_write(self.role)
        # Stable logical id from resources.py, so refactoring constructs never replaces it.
        cfn_function = self.function.node.default_child
        assert isinstance(cfn_function, lambda_.CfnFunction)
        cfn_function.override_logical_id(spec.logical_id)

        NagSuppressions.add_resource_suppressions(
            self.function,
            [
                {
                    "id": "AwsSolutions-L1",
                    "reason": "Python 3.13 is pinned on purpose: the dependency layer is built for "
                    "cp313 wheels (infra/packaging.py) and the tests run on it; upgrade runtime and "
                    "layer together.",
                }
            ],
        )
        NagSuppressions.add_resource_suppressions(
            self.role,
            [
                {
                    "id": "AwsSolutions-IAM5",
                    "reason": "Tracing ACTIVE adds xray:PutTraceSegments/PutTelemetryRecords, which do not "
                    "support resource-level permissions (resource must be '*'). A test asserts '*' is "
                    "used only by X-Ray actions.",
                    "appliesTo": ["Resource::*"],
                }
            ],
            apply_to_children=True,
        )
