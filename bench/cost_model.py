"""AWS list prices (us-east-1) from /work/shared/BENCHMARKING.md and the cost per million events.

Every figure is variable cost per million events accepted by the collector; fixed
monthly costs (stream-hours, custom metrics) are listed apart, because per event they
depend on the monthly volume, not on the code.
"""

from __future__ import annotations

from dataclasses import dataclass

GB = 1024**3
MILLION = 1_000_000
HOURS_PER_MONTH = 730

# Lambda gives a function CPU in proportion to its memory: one vCPU at 1,769 MB.
LAMBDA_MB_PER_VCPU = 1769


@dataclass(frozen=True)
class Prices:
    dynamodb_write_unit: float = 0.625 / MILLION
    dynamodb_read_unit: float = 0.125 / MILLION
    lambda_request: float = 0.20 / MILLION
    lambda_gb_second_arm64: float = 0.0000133334
    lambda_gb_second_x86_64: float = 0.0000166667
    kinesis_on_demand_ingest_gb: float = 0.08
    kinesis_on_demand_retrieval_gb: float = 0.04
    kinesis_on_demand_stream_hour: float = 0.04
    kinesis_shard_hour: float = 0.015
    kinesis_put_payload_unit: float = 0.014 / MILLION
    http_api_request: float = 1.00 / MILLION
    rest_api_request: float = 3.50 / MILLION
    sqs_request: float = 0.40 / MILLION
    eventbridge_event: float = 1.00 / MILLION
    s3_put: float = 0.005 / 1000
    s3_storage_gb_month: float = 0.023
    logs_ingest_gb: float = 0.50
    custom_metric_month: float = 0.30


PRICES = Prices()


@dataclass(frozen=True)
class CostLine:
    service: str
    item: str
    quantity_per_million: float
    unit: str
    unit_price: float

    @property
    def cost(self) -> float:
        return self.quantity_per_million * self.unit_price


def cpu_share(memory_mb: int) -> float:
    """Fraction of one vCPU a function gets at this memory size."""
    return min(1.0, memory_mb / LAMBDA_MB_PER_VCPU)


def gb_seconds(billed_ms: float, memory_mb: int) -> float:
    return billed_ms / 1000 * memory_mb / 1024
