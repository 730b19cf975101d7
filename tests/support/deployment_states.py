"""A deployment state with every part set, for the routing tests."""

from __future__ import annotations

from sluice.server.rollout.router import DeploymentState, Route, ShadowTarget


def full_state() -> DeploymentState:
    """Aliases, weighted routes, a shadow and a canary record (with a nested value)."""
    return DeploymentState(
        aliases=(("candidate", 2), ("stable", 1)),
        routes=(Route("stable", 1, 90.0), Route("candidate", 2, 10.0)),
        shadows=(ShadowTarget(3, 0.25),),
        canary={"candidate": 2, "steps": [5, 25], "nested": {"ok": True}},
    )
