"""Operator paths through the running local stack: `cdp import`, quarantine, DLQ and redrive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from e2e_pipeline import Pipeline

from cdp.unification import UnificationStage

pytestmark = pytest.mark.e2e
CDP = Path(sys.executable).parent / "cdp"


def cdp(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `cdp` command, in its own process, talking to the stack over the network."""
    stack = pipeline.stack
    return subprocess.run(
        [str(CDP), "--aws-url", stack.aws_endpoint_url, "--api-url", stack.api_url, *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
    )


def test_cdp_import_sends_a_crm_export_and_reports_refused_rows(pipeline: Pipeline, tmp_path: Path):
    export = tmp_path / "crm.csv"
    export.write_text("userId,email,plan\ncrm-1,one@example.com,gold\n,nobody@example.com,free\n"
                      "crm-2,two@example.com,silver\n")
    result = cdp(pipeline, "import", str(export), "--write-key", pipeline.write_key)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary == {"rows": 3, "resumed_after": 0, "sent": 3, "accepted": 2, "rejected": 1}
    refused = [json.loads(line) for line in (tmp_path / "crm.csv.rejected.jsonl").read_text().splitlines()]
    assert [(r["row"], r["reason"]) for r in refused] == [(2, "either userId or anonymousId is required")]

    pipeline.drain()
    stored = pipeline.stored()
    imported = [e for events in stored.table.values() for e in events if str(e.get("userId") or "").startswith("crm-")]
    assert sorted(e["traits"]["plan"] for e in imported) == ["gold", "silver"]

    # The refused row is in the quarantine, with its reason.
    listing = cdp(pipeline, "quarantine", "list", "--source", "src_local", "--raw")
    entries = [json.loads(line) for line in listing.stdout.splitlines()]
    orphan = [e for e in entries if "nobody@example.com" in e.get("raw", "")]
    assert orphan and orphan[0]["reason"] == "either userId or anonymousId is required"

    # Running the import again sends nothing: the saved progress says it is done.
    again = cdp(pipeline, "import", str(export), "--write-key", pipeline.write_key)
    assert json.loads(again.stdout.strip().splitlines()[-1])["sent"] == 0


def test_batch_that_keeps_failing_reaches_the_dlq_and_redrive_stores_it(pipeline: Pipeline, monkeypatch):
    original = UnificationStage.store

    def broken_for_one_person(self, events):
        if any(event.get("userId") == "dlq-person" for _, event in events):
            raise RuntimeError("identity table unavailable")
        original(self, events)

    monkeypatch.setattr(UnificationStage, "store", broken_for_one_person)
    body = json.dumps({"userId": "dlq-person", "event": "Stuck", "messageId": "dlq-msg-1"}).encode()
    request = urllib.request.Request(f"{pipeline.api_url}/v1/track", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": _basic(pipeline.write_key)})
    with urllib.request.urlopen(request) as response:
        assert response.status == 200
    pipeline.drain()

    deadline = time.time() + 30
    dead: list[dict[str, Any]] = []
    while time.time() < deadline and not dead:
        dead = [json.loads(line) for line in cdp(pipeline, "dlq", "list").stdout.splitlines()]
        time.sleep(0.2)
    assert dead and dead[0]["condition"] == "RetryAttemptsExhausted"
    assert "dlq-msg-1" not in pipeline.stored().table

    # The outage is over: redrive puts the records back on the stream and they are stored once.
    monkeypatch.setattr(UnificationStage, "store", original)
    redriven = cdp(pipeline, "dlq", "redrive").stdout
    assert redriven.strip() == "redrove 1 record(s)", redriven
    pipeline.drain()
    stored = pipeline.stored()
    assert len(stored.table["dlq-msg-1"]) == 1 and len(stored.archive["dlq-msg-1"]) >= 1
    assert cdp(pipeline, "dlq", "list").stdout.strip() == ""


def _basic(key: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_cdp_audiences_manage_definitions_through_the_admin_api(pipeline: Pipeline, tmp_path: Path):
    examples = Path(__file__).resolve().parents[2] / "examples" / "audiences"
    sample = json.loads((examples / "pricing-page-interest.json").read_text())
    mine = {**sample, "id": f"pricing-{uuid.uuid4().hex[:8]}"}
    definition = tmp_path / "audience.json"
    definition.write_text(json.dumps(mine))
    created = cdp(pipeline, "audiences", "create", "-f", str(definition))
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith(f"created {mine['id']} (version 1): ")
    assert mine["id"] in cdp(pipeline, "audiences", "list").stdout

    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**mine, "id": "broken-x", "condition": {"type": "trait", "trait": "plan"}}))
    refused = cdp(pipeline, "audiences", "create", "-f", str(broken))
    assert refused.returncode != 0 and "400" in refused.stderr and "condition" in refused.stderr

    assert cdp(pipeline, "audiences", "delete", mine["id"]).returncode == 0
    assert mine["id"] not in cdp(pipeline, "audiences", "list").stdout


def test_evaluator_dead_letters_are_listed_and_redriven_into_memberships(pipeline: Pipeline, monkeypatch):
    """The evaluator fails for one person until its batch reaches the DLQ; once it works
    again, `cdp dlq redrive --evaluator` brings the person into the audience."""
    import cdp.segmentation.evaluator as evaluator_module
    from cdp.aws.membership_store import MembershipStore
    from cdp.resources import MEMBERSHIPS_TABLE

    marker = uuid.uuid4().hex[:12]
    audience_id, user = f"redrive-{marker}", f"redrive-user-{marker}"
    token = pipeline.stack.access_token
    condition = {"type": "trait", "trait": "redrive_marker", "op": "equals", "value": marker}
    admin = urllib.request.Request(
        f"{pipeline.api_url}/v1/admin/audiences", method="POST",
        data=json.dumps({"id": audience_id, "name": "Redrive audience", "condition": condition}).encode(),
        headers={"Authorization": _basic(token), "Content-Type": "application/json"})
    with urllib.request.urlopen(admin) as response:
        assert response.status == 201
    real_decide = evaluator_module.decide

    def failing_for_the_marker(change: Any, *args: Any, **kwargs: Any) -> Any:
        if marker in json.dumps(change.new or {}):
            raise RuntimeError("accounts table unavailable")
        return real_decide(change, *args, **kwargs)

    try:
        time.sleep(2.5)  # the evaluator's definitions cache (2 s locally)
        monkeypatch.setattr(evaluator_module, "decide", failing_for_the_marker)
        body = json.dumps({"userId": user, "traits": {"redrive_marker": marker}}).encode()
        request = urllib.request.Request(f"{pipeline.api_url}/v1/identify", data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": _basic(pipeline.write_key)})
        with urllib.request.urlopen(request) as response:
            assert response.status == 200
        deadline = time.time() + 60
        dead: list[dict[str, Any]] = []
        while time.time() < deadline and not dead:
            dead = [json.loads(line) for line in cdp(pipeline, "dlq", "list", "--evaluator").stdout.splitlines()]
            time.sleep(0.5)
        assert dead and dead[0]["condition"] == "RetryAttemptsExhausted", dead
        store = MembershipStore(pipeline.stack.session().client("dynamodb"), MEMBERSHIPS_TABLE.local_name)
        assert store.members(audience_id).profile_ids == []

        monkeypatch.setattr(evaluator_module, "decide", real_decide)  # the outage is over
        redriven = cdp(pipeline, "dlq", "redrive", "--evaluator")
        assert redriven.returncode == 0, redriven.stderr
        outcome = json.loads(redriven.stdout.splitlines()[0])
        assert outcome["batches"] >= 1 and outcome["profiles_touched"] >= 1 and outcome["expired"] == []
        pipeline.drain()
        assert len(store.members(audience_id).profile_ids) == 1
        assert cdp(pipeline, "dlq", "list", "--evaluator").stdout.strip() == ""
    finally:
        monkeypatch.setattr(evaluator_module, "decide", real_decide)
        delete = urllib.request.Request(f"{pipeline.api_url}/v1/admin/audiences/{audience_id}", method="DELETE",
                                        headers={"Authorization": _basic(token)})
        urllib.request.urlopen(delete).close()
