"""The local stack's activation (cdp.local.activation) against the synthesized template:
the same queue attributes per destination, the same router filters and mapping settings.

The local stack's functions and pollers are replaced by recorders: what is compared is
what ``LocalActivation`` creates on moto and hands to its emulated mappings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from cdk_template_view import SynthesizedStack
from moto import mock_aws

from cdp import resources
from cdp.activation.destinations import DestinationConfig, parse_destinations
from cdp.local import activation as local_activation

pytestmark = pytest.mark.infra

ROUTER = resources.ACTIVATION_ROUTER_FUNCTION.logical_id


def _destinations(synthesized: SynthesizedStack) -> tuple[DestinationConfig, ...]:
    return tuple(parse_destinations(json.loads(synthesized.app.node.try_get_context("destinations"))))


def _mappings_of(synthesized: SynthesizedStack, function_id: str) -> list[dict[str, Any]]:
    return [dict(m["Properties"]) for m in synthesized.of_type("AWS::Lambda::EventSourceMapping").values()
            if m["Properties"]["FunctionName"] == {"Ref": function_id}]


def _template_queues(synthesized: SynthesizedStack, destination: DestinationConfig) -> tuple[str, str]:
    """(queue, dead-letter queue) logical ids of a destination."""
    (mapping,) = _mappings_of(synthesized, resources.destination_logical_id(destination.id) + "Function")
    queue = synthesized.ref_target(mapping["EventSourceArn"])
    return queue, synthesized.ref_target(synthesized.props(queue)["RedrivePolicy"]["deadLetterTargetArn"])


def _router_mapping(synthesized: SynthesizedStack, source: str) -> dict[str, Any]:
    (mapping,) = [m for m in _mappings_of(synthesized, ROUTER) if synthesized.ref_target(m["EventSourceArn"]) == source]
    return mapping


def _template_attributes(props: dict[str, Any]) -> dict[str, Any]:
    """A queue's attributes as SQS reports them, from its CloudFormation properties (SQS's
    defaults where the template leaves one out)."""
    fifo = bool(props.get("FifoQueue", False))
    redrive = props.get("RedrivePolicy")
    return {
        "fifo": fifo,
        "visibility": int(props.get("VisibilityTimeout", 30)),
        "retention": int(props.get("MessageRetentionPeriod", 4 * 24 * 3600)),
        "max_receive_count": redrive["maxReceiveCount"] if redrive else None,
        "deduplication_scope": props.get("DeduplicationScope", "queue") if fifo else None,
        "throughput_limit": props.get("FifoThroughputLimit", "perQueue") if fifo else None,
    }


def _local_attributes(attributes: dict[str, str]) -> dict[str, Any]:
    fifo = attributes.get("FifoQueue", "false") == "true"
    redrive = json.loads(attributes["RedrivePolicy"]) if "RedrivePolicy" in attributes else None
    return {
        "fifo": fifo,
        "visibility": int(attributes["VisibilityTimeout"]),
        "retention": int(attributes["MessageRetentionPeriod"]),
        "max_receive_count": int(redrive["maxReceiveCount"]) if redrive else None,
        "deduplication_scope": attributes.get("DeduplicationScope", "queue") if fifo else None,
        "throughput_limit": attributes.get("FifoThroughputLimit", "perQueue") if fifo else None,
    }


class _Recorder:
    """Stands in for a local function or an emulated mapping: keeps what it was given."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def warm_up(self) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


@pytest.fixture
def local(cdp_stack_activation: SynthesizedStack, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Any:
    """``LocalActivation`` with the fixture's destinations, provisioned on moto and started
    with recorders in place of its functions and pollers."""
    made: dict[str, list[_Recorder]] = {"dynamodb": [], "kinesis": [], "sqs": []}

    def recorder(kind: str) -> Any:
        def make(*args: Any, **kwargs: Any) -> _Recorder:
            made[kind].append(_Recorder(*args, **kwargs))
            return made[kind][-1]
        return make

    class Functions:
        @staticmethod
        def from_spec(spec: Any, *args: Any, **kwargs: Any) -> _Recorder:
            return _Recorder(spec, **kwargs)

    monkeypatch.setattr(local_activation, "LocalFunction", Functions)
    monkeypatch.setattr(local_activation, "DynamoDbEventSourceMapping", recorder("dynamodb"))
    monkeypatch.setattr(local_activation, "KinesisEventSourceMapping", recorder("kinesis"))
    monkeypatch.setattr(local_activation, "SqsEventSourceMapping", recorder("sqs"))
    monkeypatch.setattr(local_activation, "dynamodb_streams_client", lambda session: None)
    monkeypatch.setattr(local_activation, "latest_stream_arn", lambda ddb, table: f"arn:local:{table}/stream")
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        stack = local_activation.LocalActivation(session, _destinations(cdp_stack_activation),
                                                 destinations_file=tmp_path / "destinations.json")
        stack.provision()
        stack.start()
        sqs = session.client("sqs")
        attributes = {url: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
                      for url in [*stack.queue_urls.values(), *stack.dead_letter_urls.values()]}
        yield stack, made, attributes


def test_local_destination_queues_have_the_deployed_attributes(
    cdp_stack_activation: SynthesizedStack, local: Any,
) -> None:
    stack, _, attributes = local
    for destination in _destinations(cdp_stack_activation):
        queue, dlq = _template_queues(cdp_stack_activation, destination)
        local_queue = attributes[stack.queue_urls[destination.id]]
        local_dlq = attributes[stack.dead_letter_urls[destination.id]]
        assert _local_attributes(local_queue) == _template_attributes(cdp_stack_activation.props(queue)), \
            destination.id
        assert {**_local_attributes(local_dlq), "visibility": None} == {
            **_template_attributes(cdp_stack_activation.props(dlq)), "visibility": None}, destination.id
        # Redriven to its own dead-letter queue, as deployed.
        assert json.loads(local_queue["RedrivePolicy"])["deadLetterTargetArn"] == local_dlq["QueueArn"]
        # Named as deployed (the local prefix in place of the stack's).
        for url, dead_letter in ((stack.queue_urls[destination.id], False),
                                 (stack.dead_letter_urls[destination.id], True)):
            assert url.rsplit("/", 1)[-1] == resources.destination_queue_name(
                stack.prefix, destination.id, destination.type, dead_letter)
            template_name = cdp_stack_activation.props(dlq if dead_letter else queue)["QueueName"]
            assert url.rsplit("/", 1)[-1].removeprefix(stack.prefix) == template_name.removeprefix("CdpStack-")


def test_local_dead_letter_queues_have_the_deployed_visibility_timeout(
    cdp_stack_activation: SynthesizedStack, local: Any,
) -> None:
    stack, _, attributes = local
    for destination in _destinations(cdp_stack_activation):
        _, dlq = _template_queues(cdp_stack_activation, destination)
        assert _local_attributes(attributes[stack.dead_letter_urls[destination.id]])["visibility"] == \
            _template_attributes(cdp_stack_activation.props(dlq))["visibility"], destination.id


def test_local_router_reads_the_memberships_stream_as_deployed(
    cdp_stack_activation: SynthesizedStack, local: Any,
) -> None:
    _, made, _ = local
    (mapping,) = made["dynamodb"]
    spec = mapping.kwargs["spec"]
    deployed = _router_mapping(cdp_stack_activation, resources.MEMBERSHIPS_TABLE.logical_id)
    assert list(spec.filter_patterns) == [f["Pattern"] for f in deployed["FilterCriteria"]["Filters"]]
    assert (spec.batch_size, spec.max_batching_window_s, spec.starting_position) == (
        deployed["BatchSize"], deployed["MaximumBatchingWindowInSeconds"], deployed["StartingPosition"])
    assert (spec.bisect_batch_on_error, spec.retry_attempts, spec.max_record_age_s) == (
        deployed["BisectBatchOnFunctionError"], deployed["MaximumRetryAttempts"],
        deployed["MaximumRecordAgeInSeconds"])
    assert spec.report_batch_item_failures == ("ReportBatchItemFailures" in deployed.get("FunctionResponseTypes", []))
    assert mapping.kwargs["stream_arn"] == f"arn:local:{resources.MEMBERSHIPS_TABLE.local_name}/stream"


def test_local_router_reads_the_event_stream_as_deployed(
    cdp_stack_activation: SynthesizedStack, local: Any,
) -> None:
    _, made, _ = local
    (mapping,) = made["kinesis"]
    spec = mapping.kwargs["spec"]
    deployed = _router_mapping(cdp_stack_activation, resources.EVENT_STREAM.logical_id)
    assert mapping.kwargs["stream_name"] == resources.EVENT_STREAM.local_name
    assert (spec.batch_size, spec.max_batching_window_s, spec.starting_position) == (
        deployed["BatchSize"], deployed["MaximumBatchingWindowInSeconds"], deployed["StartingPosition"])
    assert (spec.bisect_batch_on_error, spec.retry_attempts, spec.max_record_age_s) == (
        deployed["BisectBatchOnFunctionError"], deployed["MaximumRetryAttempts"],
        deployed["MaximumRecordAgeInSeconds"])
    # The same Lambda filters: only the triggers' event types and names reach the router.
    assert list(mapping.kwargs["filter_patterns"]) == [f["Pattern"] for f in deployed["FilterCriteria"]["Filters"]]


def test_local_router_event_mapping_reports_failures_as_deployed(
    cdp_stack_activation: SynthesizedStack, local: Any,
) -> None:
    _, made, _ = local
    (mapping,) = made["kinesis"]
    deployed = _router_mapping(cdp_stack_activation, resources.EVENT_STREAM.logical_id)
    assert mapping.kwargs["spec"].report_batch_item_failures == (
        "ReportBatchItemFailures" in deployed.get("FunctionResponseTypes", []))


def test_local_destination_mappings_are_the_deployed_ones(
    cdp_stack_activation: SynthesizedStack, local: Any,
) -> None:
    stack, made, _ = local
    by_url = {recorded.kwargs["queue_url"]: recorded for recorded in made["sqs"]}
    destinations = _destinations(cdp_stack_activation)
    assert set(by_url) == {stack.queue_urls[d.id] for d in destinations}
    for destination in destinations:
        spec = by_url[stack.queue_urls[destination.id]].kwargs["spec"]
        (deployed,) = _mappings_of(cdp_stack_activation, resources.destination_logical_id(destination.id) + "Function")
        assert spec.batch_size == deployed["BatchSize"], destination.id
        assert spec.report_batch_item_failures == ("ReportBatchItemFailures" in deployed["FunctionResponseTypes"])
        assert spec.max_concurrency == deployed["ScalingConfig"]["MaximumConcurrency"], destination.id
        # Locally the window is at most 1 s (tests and demos wait for it); none where none is deployed.
        window = deployed.get("MaximumBatchingWindowInSeconds", 0)
        assert spec.max_batching_window_s == min(window, 1), destination.id
