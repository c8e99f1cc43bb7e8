"""The CDP domain core, shared by every Lambda function, the local stack and the CLI."""

__version__ = "0.1.0"
