"""The tokens file: bearer tokens as salted scrypt hashes, and mTLS certificate subjects, each
with its scopes and request quota.

A token is ``sluice_<id>_<secret>``: ``id`` (12 hex digits) names the entry it belongs to, so
the server runs the KDF against one hash, never against all of them; ``secret`` is 32 random
bytes (64 hex digits). The file keeps, per token, the id, a name, its scopes, its quota, a
random 16-byte salt and ``scrypt(secret, salt, n=2**14, r=8, p=1)``: never the secret. The
plaintext is shown once, by :func:`create_token`'s caller.

File layout (JSON, written atomically with mode 0600)::

    {"format": "sluice-tokens/1",
     "tokens": [{"id": "...", "name": "alice", "scopes": ["infer", "metadata"],
                 "rate_per_s": 50.0, "burst": 100, "created": "2026-01-01T00:00:00Z",
                 "kdf": {"name": "scrypt", "n": 16384, "r": 8, "p": 1, "salt": "<hex>"},
                 "hash": "<hex>"}],
     "certificates": [{"common_name": "batch-client", "scopes": ["infer"],
                       "rate_per_s": null, "burst": null}]}

``rate_per_s`` / ``burst``: the principal's token bucket (requests per second, and how many may
come at once); null: no quota. Why scrypt: a memory-hard KDF from the standard library
(``hashlib.scrypt``), so a stolen file does not hand out cheap guesses; the server pays it once
per token and process (see :mod:`.verifier`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FORMAT = "sluice-tokens/1"
#: What a scope lets a principal call (the table in ``sluice.server.protocol.access``).
SCOPES = ("infer", "metadata", "admin", "ops")
#: scrypt parameters for new tokens (interactive-login strength: ~16 MiB, tens of ms).
SCRYPT_N, SCRYPT_R, SCRYPT_P, HASH_BYTES, SALT_BYTES = 2**14, 8, 1, 32, 16
_TOKEN = re.compile(r"sluice_([0-9a-f]{12})_([0-9a-f]{64})")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


class TokenFileError(ValueError):
    """The tokens file (or a change asked of it) is unusable; the message says what, never a
    secret or a hash."""


@dataclass(frozen=True, slots=True)
class Quota:
    """A token bucket's settings: ``rate_per_s`` requests per second on average, at most
    ``burst`` at once."""

    rate_per_s: float
    burst: int


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """One token as the file keeps it (no secret)."""

    id: str
    name: str
    scopes: frozenset[str]
    quota: Quota | None
    created: str
    kdf: dict[str, Any]
    hash: bytes

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` hashes to this entry's hash (the KDF: tens of ms; blocking;
        the comparison takes the same time wherever the digests differ)."""
        kdf = self.kdf
        digest = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(kdf["salt"]), n=kdf["n"],
                                r=kdf["r"], p=kdf["p"], dklen=len(self.hash))
        return hmac.compare_digest(digest, self.hash)


@dataclass(frozen=True, slots=True)
class CertificateEntry:
    """An mTLS client certificate's common name mapped to scopes."""

    common_name: str
    scopes: frozenset[str]
    quota: Quota | None


@dataclass(frozen=True, slots=True)
class TokenFile:
    """The whole file, parsed and checked."""

    tokens: tuple[TokenEntry, ...] = ()
    certificates: tuple[CertificateEntry, ...] = ()


def split_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token, else None."""
    match = _TOKEN.fullmatch(token)
    return (match.group(1), match.group(2)) if match else None


def check_name(name: str, what: str = "token name") -> str:
    if not _NAME.fullmatch(name):
        raise TokenFileError(f"{what} {name[:64]!r} must be 1-64 letters, digits or ._@- "
                             "(starting with a letter or digit)")
    return name


def check_scopes(scopes: list[str] | tuple[str, ...]) -> frozenset[str]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise TokenFileError(f"unknown scope {unknown[0]!r} (scopes: {', '.join(SCOPES)})")
    if not scopes:
        raise TokenFileError(f"give at least one scope ({', '.join(SCOPES)})")
    return frozenset(scopes)


def make_quota(rate_per_s: float | None, burst: int | None) -> Quota | None:
    """A quota from the two settings; both None: none. A rate without a burst gets a burst of
    one second's worth (at least 1)."""
    if rate_per_s is None and burst is None:
        return None
    if rate_per_s is None or not rate_per_s > 0 or rate_per_s == float("inf"):
        raise TokenFileError("a quota needs rate_per_s > 0 (requests per second)")
    if burst is None:
        burst = max(1, int(rate_per_s))
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise TokenFileError("a quota's burst must be a whole number >= 1")
    return Quota(float(rate_per_s), burst)


# -- reading --------------------------------------------------------------------------------


def _quota_of(raw: dict[str, Any], where: str) -> Quota | None:
    try:
        return make_quota(raw.get("rate_per_s"), raw.get("burst"))
    except TokenFileError as exc:
        raise TokenFileError(f"{where}: {exc}") from None


def _token_entry(raw: Any, k: int) -> TokenEntry:
    where = f"tokens[{k}]"
    if not isinstance(raw, dict):
        raise TokenFileError(f"{where} is not an object")
    try:
        kdf = raw["kdf"]
        entry = TokenEntry(
            id=str(raw["id"]), name=check_name(str(raw["name"])),
            scopes=check_scopes(list(raw["scopes"])), quota=_quota_of(raw, where),
            created=str(raw.get("created", "")),
            kdf={"name": kdf["name"], "n": int(kdf["n"]), "r": int(kdf["r"]),
                 "p": int(kdf["p"]), "salt": str(kdf["salt"])},
            hash=bytes.fromhex(raw["hash"]),
        )
        bytes.fromhex(entry.kdf["salt"])
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, TokenFileError):
            raise TokenFileError(f"{where}: {exc}") from None
        raise TokenFileError(f"{where}: missing or malformed field ({type(exc).__name__})") \
            from None
    if entry.kdf["name"] != "scrypt" or not re.fullmatch(r"[0-9a-f]{12}", entry.id):
        raise TokenFileError(f"{where} ('{entry.name}'): unknown kdf or malformed id")
    return entry


def _certificate_entry(raw: Any, k: int) -> CertificateEntry:
    where = f"certificates[{k}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("common_name"), str):
        raise TokenFileError(f"{where} needs a common_name")
    try:
        scopes = check_scopes(list(raw.get("scopes") or ()))
    except (TokenFileError, TypeError) as exc:
        raise TokenFileError(f"{where}: {exc}") from None
    return CertificateEntry(raw["common_name"], scopes, _quota_of(raw, where))


def parse(text: str) -> TokenFile:
    """The tokens file's text, checked (raises TokenFileError naming the entry at fault)."""
    try:
        raw = json.loads(text)
    except ValueError:
        raise TokenFileError("the tokens file is not JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise TokenFileError(f"the tokens file lacks \"format\": \"{FORMAT}\"")
    tokens = tuple(_token_entry(t, k) for k, t in enumerate(raw.get("tokens") or ()))
    certs = tuple(_certificate_entry(c, k) for k, c in enumerate(raw.get("certificates") or ()))
    for kind, keys in (("token id", [t.id for t in tokens]),
                       ("token name", [t.name for t in tokens]),
                       ("certificate", [c.common_name for c in certs])):
        if len(set(keys)) != len(keys):
            raise TokenFileError(f"the tokens file names a {kind} twice")
    return TokenFile(tokens, certs)


def read(path: Path) -> TokenFile:
    """The file at ``path`` (a missing file: no tokens yet). Blocking."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return TokenFile()
    return parse(text)


# -- writing --------------------------------------------------------------------------------


def _dump(tokens: TokenFile) -> str:
    def quota(q: Quota | None) -> dict[str, Any]:
        return {"rate_per_s": q.rate_per_s if q else None, "burst": q.burst if q else None}

    return json.dumps({
        "format": FORMAT,
        "tokens": [{"id": t.id, "name": t.name, "scopes": sorted(t.scopes), **quota(t.quota),
                    "created": t.created, "kdf": t.kdf, "hash": t.hash.hex()}
                   for t in tokens.tokens],
        "certificates": [{"common_name": c.common_name, "scopes": sorted(c.scopes),
                          **quota(c.quota)} for c in tokens.certificates],
    }, indent=2) + "\n"


def write(path: Path, tokens: TokenFile) -> None:
    """Replace the file atomically (temp file, fsync, rename), readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".tokens-", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(_dump(tokens))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def create_token(path: Path, name: str, scopes: list[str], quota: Quota | None = None) -> str:
    """Add a token named ``name`` to the file at ``path`` (created if missing) and return its
    plaintext, which nothing keeps: show it once. Blocking (runs the KDF)."""
    current = read(path)
    check_name(name)
    if any(t.name == name for t in current.tokens):
        raise TokenFileError(f"a token named '{name}' exists; revoke it first")
    checked = check_scopes(scopes)
    token_id = secrets.token_hex(6)
    while any(t.id == token_id for t in current.tokens):
        token_id = secrets.token_hex(6)
    secret, salt = secrets.token_hex(32), secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            dklen=HASH_BYTES)
    created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    entry = TokenEntry(token_id, name, checked, quota, created,
                       {"name": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                        "salt": salt.hex()}, digest)
    write(path, TokenFile((*current.tokens, entry), current.certificates))
    return f"sluice_{token_id}_{secret}"


def revoke(path: Path, name: str) -> None:
    """Remove the token (or certificate mapping) named ``name``; a server notices within its
    reload interval."""
    current = read(path)
    tokens = tuple(t for t in current.tokens if t.name != name)
    certs = tuple(c for c in current.certificates if c.common_name != name)
    if len(tokens) == len(current.tokens) and len(certs) == len(current.certificates):
        raise TokenFileError(f"no token or certificate named '{name[:64]}'")
    write(path, TokenFile(tokens, certs))


def map_certificate(path: Path, common_name: str, scopes: list[str],
                    quota: Quota | None = None) -> None:
    """Grant ``scopes`` to mTLS clients whose certificate's common name is ``common_name``
    (replacing an earlier mapping of that name)."""
    current = read(path)
    if not common_name or len(common_name) > 256:
        raise TokenFileError("a certificate common name must be 1-256 characters")
    entry = CertificateEntry(common_name, check_scopes(scopes), quota)
    certs = tuple(c for c in current.certificates if c.common_name != common_name)
    write(path, TokenFile(current.tokens, (*certs, entry)))
