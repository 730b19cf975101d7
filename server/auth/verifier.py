"""Bearer tokens and certificate subjects -> principals, cheaply enough for every request.

The KDF (:meth:`TokenEntry.matches`, tens of ms) runs once per token and process; the answer is
then cached under a keyed BLAKE2b digest of the token (a per-process random key, ~0.5 us), so a
request with a known token pays one keyed hash and one dict lookup. Why keyed: the cache never
holds a token, and the dict's own key comparisons leak nothing an attacker can use, since
without the key no one can aim at a digest. Promises:

- a malformed token, or one whose id names no entry, is refused without running the KDF;
- a wrong secret for a known id costs one KDF, then is remembered (bounded) as refused;
- both caches are bounded (``cache_entries`` each, oldest dropped first);
- :meth:`TokenVerifier.reload_if_changed` rereads the file when it changed (a revoked token
  stops working then); quota buckets of principals whose quota did not change carry over;
- thread-safe: the gRPC loop reads, KDF threads and /metrics' HTTP threads write.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sluice.server.auth import tokens as token_file
from sluice.server.auth.quota import TokenBucket
from sluice.server.auth.tokens import Quota, TokenEntry


@dataclass(slots=True, eq=False)
class Principal:
    """Who a request comes from: a token's name or ``cert:<common name>``, its scopes and its
    quota's bucket (None: no quota)."""

    name: str
    scopes: frozenset[str]
    bucket: TokenBucket | None


class TokenVerifier:
    """The tokens file at ``path``, read now (raises TokenFileError when unusable)."""

    def __init__(self, path: Path, *, cache_entries: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._limit = cache_entries
        # Keyed once; each digest copies this state (a fresh keyed object costs ~2x as much).
        self._keyed = hashlib.blake2b(key=secrets.token_bytes(32), digest_size=16)
        self._lock = threading.Lock()
        self._known: dict[bytes, Principal] = {}
        self._refused: dict[bytes, None] = {}
        self._entries: dict[str, TokenEntry] = {}
        self._principals: dict[str, Principal] = {}
        self._certificates: dict[str, Principal] = {}
        self._stamp: tuple[int, int, int] | None = None
        #: Times the KDF ran (each a cache miss on a well-formed token of a known id).
        self.kdf_runs = 0
        self.reload()

    # -- the request path -------------------------------------------------------------------

    def digest(self, token: str) -> bytes:
        """The cache key of ``token`` (keyed BLAKE2b, 16 bytes)."""
        keyed = self._keyed.copy()
        keyed.update(token.encode())
        return keyed.digest()

    def cached(self, digest: bytes) -> Principal | None:
        """The principal of an already verified token, else None (not yet verified, or bad)."""
        return self._known.get(digest)

    def needs_kdf(self, token: str, digest: bytes) -> bool:
        """Whether :meth:`verify` would run the KDF: the token is well formed, its id known,
        and it is neither verified nor remembered as refused."""
        if digest in self._known or digest in self._refused:
            return False
        parts = token_file.split_token(token)
        return parts is not None and parts[0] in self._entries

    def verify(self, token: str, digest: bytes | None = None) -> Principal | None:
        """The principal ``token`` authenticates, else None. May run the KDF: blocking."""
        digest = self.digest(token) if digest is None else digest
        found = self._known.get(digest)
        if found is not None or digest in self._refused:
            return found
        parts = token_file.split_token(token)
        entry = self._entries.get(parts[0]) if parts is not None else None
        if parts is None or entry is None:
            return None
        self.kdf_runs += 1
        ok = entry.matches(parts[1])
        with self._lock:
            if self._entries.get(entry.id) is not entry:  # reloaded meanwhile: decide again
                return None
            if not ok:
                self._remember(self._refused, digest, None)
                return None
            principal = self._principals[entry.name]
            self._remember(self._known, digest, principal)
        return principal

    def certificate(self, common_name: str) -> Principal | None:
        """The principal an mTLS client certificate with ``common_name`` maps to, else None."""
        return self._certificates.get(common_name)

    @property
    def has_certificates(self) -> bool:
        return bool(self._certificates)

    def _remember(self, cache: dict, digest: bytes, value: Principal | None) -> None:
        while len(cache) >= self._limit:
            cache.pop(next(iter(cache)), None)
        cache[digest] = value

    # -- the file ---------------------------------------------------------------------------

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def reload_if_changed(self) -> bool:
        """Reread the file if it changed since it was read; True when it did. Blocking. A file
        that became unusable keeps the last good one in force (the caller logs the error)."""
        if self._file_stamp() == self._stamp:
            return False
        self.reload()
        return True

    def reload(self) -> None:
        """Read the file now and serve it from now on (every cached answer is dropped)."""
        stamp = self._file_stamp()
        parsed = token_file.read(self.path)
        now = self._clock()
        old = {**self._principals, **{f"cert:{k}": p for k, p in self._certificates.items()}}

        def principal(name: str, scopes: frozenset[str], quota: Quota | None) -> Principal:
            before = old.get(name)
            bucket = None
            if quota is not None:
                kept = before.bucket if before is not None else None
                bucket = kept if kept is not None and kept.quota == quota else \
                    TokenBucket(quota, now)
            return Principal(name, scopes, bucket)

        principals = {t.name: principal(t.name, t.scopes, t.quota) for t in parsed.tokens}
        certs = {c.common_name: principal(f"cert:{c.common_name}", c.scopes, c.quota)
                 for c in parsed.certificates}
        with self._lock:
            self._entries = {t.id: t for t in parsed.tokens}
            self._principals = principals
            self._certificates = certs
            self._known = {}
            self._refused = {}
            self._stamp = stamp
