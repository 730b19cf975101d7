"""A real Sluice with ``--tokens``: one token per scope, made with ``sluice token create``'s own
function, so every test holds the plaintext the way an operator would."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sluice.server.auth import tokens
from sluice.server.auth.tokens import SCOPES


@dataclass
class Tokens:
    """The tokens file and the plaintext of each token in it, by name."""

    path: Path
    plain: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, scopes: list[str], quota: tokens.Quota | None = None) -> str:
        self.plain[name] = tokens.create_token(self.path, name, scopes, quota)
        return self.plain[name]

    def header(self, name: str) -> dict[str, str]:
        """tritonclient's ``headers=`` for the token ``name``."""
        return {"authorization": f"Bearer {self.plain[name]}"}


def one_token_per_scope(path: Path) -> Tokens:
    """Tokens named after their one scope (infer, metadata, admin, ops), and ``all``."""
    made = Tokens(path)
    for scope in SCOPES:
        made.add(scope, [scope])
    made.add("all", list(SCOPES))
    return made
