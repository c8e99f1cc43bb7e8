"""Monitoring: the alarms an operator must act on, and one dashboard of the ingestion path."""

from __future__ import annotations

from dataclasses import dataclass, field

from aws_cdk import Duration
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_kinesis as kinesis
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdp import resources
from cdp.observability import NAMESPACE, SERVICE

# The consumer is "behind" when its oldest unprocessed record is older than this. Records
# older than the mapping's max record age (6 h) go to the DLQ, so this fires long before.
ITERATOR_AGE_THRESHOLD = Duration.minutes(5)
# A handful of 5xx in 5 minutes is worth a look; the Lambda errors alarm catches crashes.
API_5XX_THRESHOLD = 5


@dataclass(frozen=True)
class ActivationResources:
    """What the activation alarms watch (``infra.constructs.activation.Activation``)."""

    router: lambda_.IFunction | None
    router_dlq: sqs.IQueue | None
    # destination id -> (its function, its queue, its dead-letter queue)
    destinations: dict[str, tuple[lambda_.IFunction, sqs.IQueue, sqs.IQueue]] = field(default_factory=dict)


class Monitoring(Construct):
    """Alarms (optionally notifying an existing SNS topic) and a dashboard."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        http_api: apigwv2.IHttpApi,
        stream: kinesis.IStream,
        collector: lambda_.IFunction,
        consumer: lambda_.IFunction,
        dlq: sqs.IQueue,
        evaluator: lambda_.IFunction | None = None,
        evaluator_dlq: sqs.IQueue | None = None,
        jobs: dict[str, lambda_.IFunction] | None = None,
        activation: ActivationResources | None = None,
        alarm_topic_arn: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        one_minute = Duration.minutes(1)
        five_minutes = Duration.minutes(5)

        iterator_age = consumer.metric("IteratorAge", statistic="Maximum", period=one_minute)
        dlq_depth = dlq.metric_approximate_number_of_messages_visible(statistic="Maximum", period=one_minute)
        api_5xx = http_api.metric_server_error(statistic="Sum", period=five_minutes)
        collector_errors = collector.metric_errors(statistic="Sum", period=five_minutes)
        consumer_errors = consumer.metric_errors(statistic="Sum", period=five_minutes)

        self.alarms: dict[str, cloudwatch.Alarm] = {
            # Sustained for 5 minutes, so a single slow batch does not page anyone.
            "ConsumerIteratorAge": cloudwatch.Alarm(
                self,
                "ConsumerIteratorAgeAlarm",
                alarm_description="The stream consumer is falling behind: oldest record older than "
                f"{ITERATOR_AGE_THRESHOLD.to_minutes()} min. Records older than "
                f"{resources.STREAM_CONSUMER_ESM.max_record_age_s // 3600} h go to the DLQ.",
                metric=iterator_age,
                threshold=ITERATOR_AGE_THRESHOLD.to_milliseconds(),
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=5,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            # Any message means a batch was given up on: events need a redrive.
            "DlqDepth": cloudwatch.Alarm(
                self,
                "DlqDepthAlarm",
                alarm_description="Batches the stream consumer gave up on are waiting in the DLQ; redrive "
                f"them within {resources.EVENT_STREAM_RETENTION_HOURS} h of ingestion, before the stream "
                "drops the records.",
                metric=dlq_depth,
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            "Api5xx": cloudwatch.Alarm(
                self,
                "Api5xxAlarm",
                alarm_description="The HTTP API returned 5xx responses: collected events may have been lost "
                "(clients retry, but not forever), or Profile API reads failed.",
                metric=api_5xx,
                threshold=API_5XX_THRESHOLD,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            # The collector turns every expected failure into a response; an invocation
            # error is a crash or a timeout.
            "CollectorErrors": cloudwatch.Alarm(
                self,
                "CollectorErrorsAlarm",
                alarm_description="The collector function crashed or timed out.",
                metric=collector_errors,
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            # Record-level failures are reported as partial batch responses, so an
            # invocation error means the whole batch failed and is being retried.
            "ConsumerErrors": cloudwatch.Alarm(
                self,
                "ConsumerErrorsAlarm",
                alarm_description="The stream consumer crashed or timed out; the batch is retried and, "
                "after the retries, sent to the DLQ.",
                metric=consumer_errors,
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
        }

        if evaluator is not None and evaluator_dlq is not None:
            self.alarms.update(self._evaluator_alarms(evaluator, evaluator_dlq))
        if activation is not None and activation.router is not None and activation.router_dlq is not None:
            self.alarms.update(self._activation_alarms(activation))
        for name, function in (jobs or {}).items():
            # Scheduled jobs (backfill, re-evaluation): a failed run is retried by the next
            # tick, but one failing every tick leaves definitions not ready or windows stale.
            self.alarms[f"{name}Errors"] = cloudwatch.Alarm(
                self,
                f"{name}ErrorsAlarm",
                alarm_description=f"The {name} job failed in 3 of its last runs (15 minutes); it runs again on its "
                "schedule, but what it does (backfills, time-based memberships) is not progressing.",
                metric=function.metric_errors(statistic="Sum", period=five_minutes),
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=3,
                datapoints_to_alarm=3,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )

        if alarm_topic_arn:
            topic = sns.Topic.from_topic_arn(self, "AlarmTopic", alarm_topic_arn)
            for alarm in self.alarms.values():
                alarm.add_alarm_action(cw_actions.SnsAction(topic))
                alarm.add_ok_action(cw_actions.SnsAction(topic))

        self.dashboard = cloudwatch.Dashboard(
            self,
            "Dashboard",
            default_interval=Duration.hours(3),
            period_override=cloudwatch.PeriodOverride.AUTO,
        )
        self.dashboard.add_widgets(
            cloudwatch.AlarmStatusWidget(
                title="Alarms", alarms=list(self.alarms.values()), width=24, height=3
            )
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="API requests and errors",
                left=[http_api.metric_count(period=five_minutes)],
                right=[
                    http_api.metric_client_error(period=five_minutes),
                    http_api.metric_server_error(period=five_minutes),
                ],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="API latency (p99)",
                left=[
                    http_api.metric_latency(statistic="p99", period=five_minutes),
                    http_api.metric_integration_latency(statistic="p99", period=five_minutes),
                ],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Collector invocations, errors, throttles",
                left=[collector.metric_invocations(period=five_minutes)],
                right=[collector_errors, collector.metric_throttles(period=five_minutes)],
                width=8,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Stream incoming records",
                left=[stream.metric_incoming_records(period=five_minutes, statistic="Sum")],
                right=[stream.metric_put_records_failed_records(period=five_minutes, statistic="Sum")],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Consumer iterator age (ms)",
                left=[iterator_age],
                left_annotations=[
                    cloudwatch.HorizontalAnnotation(
                        value=ITERATOR_AGE_THRESHOLD.to_milliseconds(), label="alarm"
                    )
                ],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Consumer invocations, errors / DLQ depth",
                left=[consumer.metric_invocations(period=five_minutes), consumer_errors],
                right=[dlq_depth],
                width=8,
            ),
        )

        if evaluator is not None and evaluator_dlq is not None:
            self.dashboard.add_widgets(
                cloudwatch.GraphWidget(
                    title="Segment evaluator iterator age (ms)",
                    left=[evaluator.metric("IteratorAge", statistic="Maximum", period=one_minute)],
                    width=8,
                ),
                cloudwatch.GraphWidget(
                    title="Segment evaluator invocations, errors / DLQ depth",
                    left=[evaluator.metric_invocations(period=five_minutes),
                          evaluator.metric_errors(statistic="Sum", period=five_minutes)],
                    right=[evaluator_dlq.metric_approximate_number_of_messages_visible(statistic="Maximum",
                                                                                        period=one_minute)],
                    width=8,
                ),
            )

        if activation is not None and activation.router is not None:
            self._activation_widgets(activation)

        def cdp_metric(name: str) -> cloudwatch.Metric:
            # The consumer's EMF metrics (Powertools: namespace CDP, dimension service=cdp).
            return cloudwatch.Metric(namespace=NAMESPACE, metric_name=name, dimensions_map={"service": SERVICE},
                                     statistic="Sum", period=five_minutes)

        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Events stored / duplicates, quarantined",
                left=[cdp_metric("EventsStored")],
                right=[cdp_metric("DuplicatesSkipped"), cdp_metric("EventsQuarantined")],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Identity: merges, blocked merges",
                left=[cdp_metric("ProfilesMerged"), cdp_metric("MergesBlocked")],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Identity: concurrent changes (retries, batches redone)",
                left=[cdp_metric("GraphRetries"), cdp_metric("BatchConflicts")],
                width=8,
            ),
        )

    def _evaluator_alarms(self, evaluator: lambda_.IFunction, dlq: sqs.IQueue) -> dict[str, cloudwatch.Alarm]:
        """The segment evaluator's: behind on the identity stream, a batch given up on, a crash."""
        one_minute, five_minutes = Duration.minutes(1), Duration.minutes(5)
        return {
            "EvaluatorIteratorAge": cloudwatch.Alarm(
                self,
                "EvaluatorIteratorAgeAlarm",
                alarm_description="The segment evaluator is falling behind the identity table's stream: "
                f"memberships lag by over {ITERATOR_AGE_THRESHOLD.to_minutes()} min. Records older than "
                f"{resources.SEGMENT_EVALUATOR_ESM.max_record_age_s // 3600} h go to its DLQ.",
                metric=evaluator.metric("IteratorAge", statistic="Maximum", period=one_minute),
                threshold=ITERATOR_AGE_THRESHOLD.to_milliseconds(),
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=5,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            "EvaluatorDlqDepth": cloudwatch.Alarm(
                self,
                "EvaluatorDlqDepthAlarm",
                alarm_description="Profile changes the segment evaluator gave up on are in its DLQ: those "
                "profiles' memberships may be stale until they change again or are re-evaluated.",
                metric=dlq.metric_approximate_number_of_messages_visible(statistic="Maximum", period=one_minute),
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
            "EvaluatorErrors": cloudwatch.Alarm(
                self,
                "EvaluatorErrorsAlarm",
                alarm_description="The segment evaluator crashed, timed out, or failed a whole batch; it is "
                "retried and, after the retries, sent to the DLQ.",
                metric=evaluator.metric_errors(statistic="Sum", period=five_minutes),
                threshold=0,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            ),
        }

    def _activation_alarms(self, activation: ActivationResources) -> dict[str, cloudwatch.Alarm]:
        """The router's (behind, gave up, crashed) and each destination's (dead letters
        waiting, a queue not draining)."""
        assert activation.router is not None and activation.router_dlq is not None
        one_minute, five_minutes = Duration.minutes(1), Duration.minutes(5)
        router = activation.router
        alarms = {
            "ActivationRouterIteratorAge": cloudwatch.Alarm(
                self, "ActivationRouterIteratorAgeAlarm",
                alarm_description="The activation router is falling behind the memberships table's stream or the "
                f"event stream: deliveries lag by over {ITERATOR_AGE_THRESHOLD.to_minutes()} min.",
                metric=router.metric("IteratorAge", statistic="Maximum", period=one_minute),
                threshold=ITERATOR_AGE_THRESHOLD.to_milliseconds(),
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=5, treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING),
            "ActivationRouterDlqDepth": cloudwatch.Alarm(
                self, "ActivationRouterDlqDepthAlarm",
                alarm_description="Changes or events the activation router could not put on destination queues "
                "are in its DLQ: those deliveries did not happen.",
                metric=activation.router_dlq.metric_approximate_number_of_messages_visible(
                    statistic="Maximum", period=one_minute),
                threshold=0, comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1, treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING),
            "ActivationRouterErrors": cloudwatch.Alarm(
                self, "ActivationRouterErrorsAlarm",
                alarm_description="The activation router failed a batch (retried, then sent to its DLQ).",
                metric=router.metric_errors(statistic="Sum", period=five_minutes),
                threshold=0, comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1, treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING),
        }
        for destination_id, (_function, queue, dead_letters) in sorted(activation.destinations.items()):
            name = "".join(part.capitalize() for part in destination_id.replace("_", "-").split("-"))
            alarms[f"Destination{name}DeadLetters"] = cloudwatch.Alarm(
                self, f"Destination{name}DeadLettersAlarm",
                alarm_description=f"Messages to destination {destination_id} were given up on (a refusal, or the "
                "retry window ended): `cdp destinations dead-letters` shows why, `redrive` sends them again.",
                metric=dead_letters.metric_approximate_number_of_messages_visible(statistic="Maximum",
                                                                                  period=one_minute),
                threshold=0, comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1, treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
            # Oldest message over an hour for 15 minutes: the destination is down or too slow
            # for its traffic (its messages are being retried, or its concurrency is too low).
            alarms[f"Destination{name}Backlog"] = cloudwatch.Alarm(
                self, f"Destination{name}BacklogAlarm",
                alarm_description=f"Destination {destination_id} is behind: its oldest message waits over an "
                "hour (retries of a failing API, or too little max_concurrency for the traffic).",
                metric=queue.metric_approximate_age_of_oldest_message(statistic="Maximum", period=five_minutes),
                threshold=3600, comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=3, treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING)
        return alarms

    def _activation_widgets(self, activation: ActivationResources) -> None:
        five_minutes = Duration.minutes(5)

        def per_destination(metric_name: str, destination_id: str) -> cloudwatch.Metric:
            return cloudwatch.Metric(namespace=NAMESPACE, metric_name=metric_name, statistic="Sum",
                                     period=five_minutes, label=f"{destination_id} {metric_name}",
                                     dimensions_map={"service": SERVICE, "destination": destination_id})

        ids = sorted(activation.destinations)
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Activation: delivered", width=8,
                left=[per_destination("MessagesDelivered", d) for d in ids]),
            cloudwatch.GraphWidget(
                title="Activation: retried / dead-lettered", width=8,
                left=[per_destination("MessagesRetried", d) for d in ids],
                right=[per_destination("MessagesDeadLettered", d) for d in ids]),
            cloudwatch.GraphWidget(
                title="Activation: oldest message age (s)", width=8,
                left=[queue.metric_approximate_age_of_oldest_message(statistic="Maximum", period=five_minutes,
                                                                      label=d)
                      for d, (_f, queue, _dl) in sorted(activation.destinations.items())]),
        )
