"""The configuration example in docs/activation.md and the demo destinations are valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

from cdp.activation.destinations import parse_destinations

ROOT = Path(__file__).resolve().parents[3]


def test_the_documented_configuration_example_is_valid() -> None:
    text = (ROOT / "docs" / "activation.md").read_text(encoding="utf-8")
    found = re.search(r"```json\n(.*?)```", text, re.S)
    assert found is not None
    destinations = parse_destinations(json.loads(found.group(1)))
    assert {d.type for d in destinations} == {"webhook", "slack", "meta_custom_audiences", "s3"}


def test_the_demo_destinations_are_valid_once_pointed_at_an_inbox() -> None:
    text = (ROOT / "examples" / "destinations" / "demo.json").read_text(encoding="utf-8")
    destinations = parse_destinations(json.loads(text.replace("{inbox}", "http://127.0.0.1:9999")))
    assert [d.id for d in destinations] == ["demo-webhook", "demo-slack", "demo-exports"]
