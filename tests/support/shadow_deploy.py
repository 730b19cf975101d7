"""Setting up a shadow on a running test server: one deployment change, one tuned mirror."""

from __future__ import annotations

from sluice.server.rollout.router import DeploymentState, Route, ShadowTarget
from sluice.server.rollout.shadow import ShadowMirror
from tests.support.running import RunningServer


def with_mirror(running: RunningServer, **settings: object) -> ShadowMirror:
    """The server's mirror, with ``settings`` (public attributes) changed for this test."""
    mirror = running.server.shadow
    settings.setdefault("shadow_timeout_s", 30.0)  # a busy machine must not shed copies here
    for key, value in settings.items():
        assert hasattr(mirror, key), key
        setattr(mirror, key, value)
    return mirror


def deploy_shadow(running: RunningServer, model: str, live: int, shadow: int) -> None:
    """All traffic to ``live``, every request mirrored to ``shadow`` (through Router.change)."""
    state = DeploymentState(
        routes=(Route(f"v{live}", live, 1.0),),
        shadows=(ShadowTarget(shadow, 1.0),),
    )
    running.call(running.server.router.change(model, "shadow_start", state, caller="test"))
