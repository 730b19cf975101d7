"""The lookups the router makes of a model repository, over fake versions (no models loaded):
unit tests of routing and canaries need versions to point at, not inference."""

from __future__ import annotations

from dataclasses import dataclass

from sluice.server.errors import ModelNotFound


@dataclass
class FakeVersion:
    name: str
    version: int


class FakeRepository:
    """``{model: [versions]}`` as ModelRepository.get / ready / find answer them."""

    def __init__(self, versions: dict[str, list[int]]) -> None:
        self.models = {n: {v: FakeVersion(n, v) for v in vs} for n, vs in versions.items()}

    def get(self, name: str, version: str = "") -> FakeVersion:
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFound(f"model '{name}' is not loaded")
        if not version:
            return versions[max(versions)]
        if not version.isdigit() or int(version) not in versions:
            raise ModelNotFound(f"model '{name}' has no version '{version}'")
        return versions[int(version)]

    def find(self, name: str, version: int) -> FakeVersion | None:
        return self.models.get(name, {}).get(version)

    def ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except ModelNotFound:
            return False
        return True

    def versions(self, name: str) -> list[int]:
        return sorted(self.models.get(name, {}))

    def version_hint(self, name: str, version: int) -> str:
        return f"(how to load {name} version {version})"
