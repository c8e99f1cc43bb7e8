"""Adapters: the only modules that talk to AWS. One per table, stream, bucket or queue."""
