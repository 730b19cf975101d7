"""Who may call what (issue 14, items 2-3): the tokens file (salted hashes only), verifying a
bearer token cheaply per request, per-principal quotas and the access audit trail.

Transport-free: ``sluice.server.protocol.auth`` is the gRPC interceptor that applies these, and
``sluice.server.metrics_http`` guards /metrics with them.
"""
