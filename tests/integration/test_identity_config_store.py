"""Identity settings: the deployment's by default, an admin's once set, cached per warm function."""

from __future__ import annotations

import boto3

from cdp import resources
from cdp.aws.identity_config_store import IdentityConfigStore
from cdp.identity.config import IdentifierType, IdentityConfig


def test_admin_settings_replace_the_deployment_ones_after_the_cache_expires(aws):
    clock = [0.0]
    ddb = boto3.client("dynamodb")
    deployment = IdentityConfig(default_phone_region="PT")
    store = IdentityConfigStore(ddb, resources.IDENTITY_TABLE.local_name, deployment, cache_seconds=60,
                                clock=lambda: clock[0])
    assert store.current() == deployment and store.describe()["origin"] == "deployment"

    admin = IdentityConfig(types=(IdentifierType(name="user_id", priority=1, limit=1),
                                  IdentifierType(name="email", priority=2, limit=1)))
    other_function = IdentityConfigStore(ddb, resources.IDENTITY_TABLE.local_name, deployment,
                                         clock=lambda: clock[0])
    other_function.put(admin)
    assert store.current() == deployment  # cached
    clock[0] = 61
    assert store.current() == admin and store.describe() == {"origin": "admin",
                                                             "config": admin.model_dump(mode="json")}
    other_function.reset()
    clock[0] = 200
    assert store.current() == deployment
