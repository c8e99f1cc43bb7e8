"""The embedded local stack (``cdp local``): the CDP on moto, in one process.

AWS services are moto's; the Lambda handlers in ``functions/`` run unchanged, invoked
with the events API Gateway and the Kinesis event source mapping would send them.
"""

from cdp.local.stack import (
    ACCESS_TOKEN_ENV,
    DEFAULT_ACCESS_TOKEN,
    DEFAULT_SPACE,
    DEFAULT_WRITE_KEY,
    LOCAL_SOURCE_ID,
    EmbeddedStack,
)

__all__ = [
    "ACCESS_TOKEN_ENV",
    "DEFAULT_ACCESS_TOKEN",
    "DEFAULT_SPACE",
    "DEFAULT_WRITE_KEY",
    "LOCAL_SOURCE_ID",
    "EmbeddedStack",
]
