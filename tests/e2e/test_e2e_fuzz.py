"""Schema-driven fuzzing of the collection API (schemathesis, from our own /openapi.json).

Every generated request, valid or not, must get a documented status code, a JSON body
that matches the documented schema, and never a 5xx.
"""

from __future__ import annotations

import base64

import pytest
import schemathesis
from e2e_pipeline import Pipeline
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from cdp.openapi import openapi_document

pytestmark = pytest.mark.e2e

# The short forms (/v1/t, /v1/b, ...) and /v1/import run the same code as the long
# names: fuzz each behaviour once, to keep the suite fast.
schema = schemathesis.openapi.from_dict(openapi_document()).include(
    path_regex=r"^/v1/(identify|track|page|screen|group|alias|batch)$|^/v1/projects/|^/health$"
)
ALIAS_PATHS = ("/v1/alias", "/v1/a")
BATCH_PATHS = ("/v1/batch", "/v1/b", "/v1/import")


@schema.parametrize()
# derandomize: CI runs the same generated cases every time (a failure is reproducible,
# never a coin toss); change the seed locally with --hypothesis-seed to explore more.
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_answers_every_generated_request_as_documented(case, pipeline: Pipeline):
    token = base64.b64encode(f"{pipeline.write_key}:".encode()).decode()
    response = case.call(base_url=pipeline.api_url, headers={"Authorization": f"Basic {token}"})
    assert response.status_code < 500, response.text
    excluded = []
    if case.operation.path in ALIAS_PATHS + BATCH_PATHS:
        # "previousId must differ from userId" cannot be said in JSON Schema; such an
        # alias (alone, or as the only call of a batch) is refused on purpose with a 400.
        excluded.append(positive_data_acceptance)
    if case.operation.path in BATCH_PATHS:
        # By design a batch with some invalid calls is accepted for its valid ones (200,
        # with the others listed under "rejected" and quarantined).
        excluded.append(negative_data_rejection)
    case.validate_response(response, excluded_checks=excluded)
