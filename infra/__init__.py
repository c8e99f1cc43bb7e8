"""AWS CDK (Python) infrastructure of the CDP: one stack built from per-domain constructs.

Every table, stream, bucket, queue and function is built from the specs in
``cdp.resources`` so the cloud and the embedded local stack cannot drift.
"""
