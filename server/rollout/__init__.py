"""Deployments: which version answers a request. Router, routing table, deployment state and
its stores, state sync between workers, arm statistics, the shadow mirror and its comparison,
the canary plan and driver. Uses ``sluice.server.serving``; imports no transport and no model
runtime."""
