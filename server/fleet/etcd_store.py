"""The fleet's deployment state and audit log in etcd (``sluice serve --state-store
etcd://host:port/prefix``), beside the file store of one machine
(:mod:`sluice.server.rollout.deploy_store`), with the same entries and the same promises.

Keys under the prefix (``/sluice`` when the URL names none)::

    <prefix>/deployments/<model>   StoredDeployment.to_json(): state, rollback history, yaml hash
    <prefix>/audit/<unix ns>-<id>  one audit record per change (JSON), never rewritten
    <prefix>/leader/canary         the canary driver's lock (sluice.server.fleet.leadership)

Promises:

- **Compare-and-swap on a revision.** A save is one etcd transaction: put the model's entry if
  its key's ``mod_revision`` is still the one this replica last saw (0: no entry). Otherwise
  nothing is written and :class:`DeploymentConflict` (FAILED_PRECONDITION) carries the entry in
  etcd now, which the ledger adopts, so a retry works: a change computed from a stale state is
  never applied, whichever replica computed it.
- **Unreachable etcd fails at once.** Every call has a deadline (``timeout_s``) and the gRPC
  channel reconnects quickly (200 ms .. 1 s backoff, so a restarted etcd is seen within about a
  second); a failure is :class:`StateStoreUnavailable` (UNAVAILABLE) naming the store, its
  endpoint and prefix, never a file path or a library traceback. What a replica serves is
  unaffected: state is applied locally, and no request reads etcd.
- **Everything is async** on the server's event loop (aetcd over grpc.aio): nothing blocks it.
- A value that does not parse (edited by hand) is refused with an error naming its key, and the
  model keeps the state it had.

Which revision of each model this replica has applied is noted by the reader that applied it:
:meth:`load_all` at start and :class:`~sluice.server.fleet.etcd_follower.EtcdFollower` for
every watch event after.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aetcd
import aetcd.exceptions
import aetcd.rpc

from sluice.server.errors import Code, SluiceError
from sluice.server.fleet.location import EtcdLocation
from sluice.server.rollout.deploy_store import (
    HISTORY_LIMIT,
    DeploymentConflict,
    StoredDeployment,
)
from sluice.server.rollout.deployment import DeploymentState

log = logging.getLogger(__name__)

#: What a call to etcd may raise when etcd is down, slow or gone (mapped to UNAVAILABLE).
_ETCD_ERRORS = (aetcd.exceptions.ClientError, aetcd.rpc.AioRpcError, OSError, TimeoutError)
#: gRPC channel options: reconnect within about a second once etcd is back (gRPC's default
#: backoff grows to two minutes, which would keep a replica off a restarted etcd that long).
_CHANNEL = {
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
}


class StateStoreUnavailable(SluiceError):
    """The state store cannot be reached now; nothing was changed. Names the store only."""

    code = Code.UNAVAILABLE


class EtcdDeploymentStore:
    """Reads and compare-and-swaps deployment entries in etcd; appends audit records there.

    Owns one aetcd client (one gRPC channel), opened by :meth:`open` and closed by :meth:`close`;
    the follower and the leadership use it too (:attr:`client`)."""

    def __init__(self, location: EtcdLocation, *, timeout_s: float = 2.0) -> None:
        self.location = location
        self.timeout_s = timeout_s
        self.deployments_prefix = f"{location.prefix}/deployments/"
        self.audit_prefix = f"{location.prefix}/audit/"
        self._client: aetcd.Client | None = None
        #: model -> (mod_revision of its key as this replica last applied it, 0: none; entry).
        self._known: dict[str, tuple[int, StoredDeployment | None]] = {}
        #: Called (model, entry) when a save of ours returned after a newer revision of the
        #: same model had been applied: the caller's commit must not leave the older one served.
        self.on_superseded: Callable[[str, StoredDeployment | None], None] | None = None

    @property
    def client(self) -> aetcd.Client:
        if self._client is None:
            self._client = aetcd.Client(self.location.host, self.location.port,
                                        timeout=self.timeout_s, options=_CHANNEL)
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except _ETCD_ERRORS:  # closing a channel to a dead member: nothing left to do
                pass

    def unavailable(self, what: str) -> StateStoreUnavailable:
        """The error for ``what`` failing because etcd did not answer."""
        return StateStoreUnavailable(
            f"deployment state store {self.location} is unreachable: {what} failed; this "
            "replica keeps serving the last deployment state it applied")

    # -- reading ------------------------------------------------------------------------------

    async def snapshot(self) -> tuple[dict[str, tuple[int, StoredDeployment]], int]:
        """({model: (mod_revision, entry)}, etcd revision of the read). Entries that do not
        parse are logged and left out. Raises StateStoreUnavailable."""
        try:
            found = await self.client.get_prefix(self.deployments_prefix.encode())
        except _ETCD_ERRORS:
            raise self.unavailable("reading the deployment state") from None
        entries = {}
        for kv in found:
            name = kv.key.decode("utf-8", "replace")[len(self.deployments_prefix):]
            entry = self.parse(kv.key, kv.value)
            if entry is not None:
                entries[name] = (kv.mod_revision, entry)
        return entries, found.header.revision

    async def load_all(self) -> dict[str, StoredDeployment]:
        """Every model's entry (the ledger's start-up read); notes their revisions."""
        entries, _ = await self.snapshot()
        self._known = {name: found for name, found in entries.items()}
        return {name: entry for name, (_, entry) in entries.items()}

    def parse(self, key: bytes, value: bytes) -> StoredDeployment | None:
        """The entry stored at ``key``, or None (logged, naming the key) when it is unusable."""
        try:
            return StoredDeployment.from_json(json.loads(value.decode("utf-8")))
        except (UnicodeDecodeError, ValueError) as exc:
            log.error("deployment state in %s: key %s refused (%s); its model keeps the state "
                      "it had", self.location, key.decode("utf-8", "replace"), exc)
            return None

    def note(self, model: str, mod_revision: int, entry: StoredDeployment | None) -> None:
        """Record that ``model``'s entry at ``mod_revision`` (a delete: entry None) is applied."""
        if mod_revision >= self._known.get(model, (0, None))[0]:
            self._known[model] = (mod_revision, entry)

    def applied_revision(self, model: str) -> int:
        return self._known.get(model, (0, None))[0]

    # -- writing ------------------------------------------------------------------------------

    async def save(
        self, model: str, state: DeploymentState, *, history: tuple[DeploymentState, ...] = (),
        yaml_sha256: str | None = None, expect: DeploymentState | None = None,
    ) -> None:
        """Put ``model``'s entry if its key is still at the revision this replica applied
        (``expect`` is the state the change was computed from: always the applied one here).
        Raises DeploymentConflict (nothing written) or StateStoreUnavailable."""
        entry = StoredDeployment(state, tuple(history[:HISTORY_LIMIT]), yaml_sha256)
        key = (self.deployments_prefix + model).encode()
        value = json.dumps(entry.to_json(), separators=(",", ":"), allow_nan=False).encode()
        seen = self.applied_revision(model)
        tx = self.client.transactions
        try:
            ok, replies = await self.client.transaction(
                compare=[tx.mod(key) == seen], success=[tx.put(key, value)],
                failure=[tx.get(key)])
        except _ETCD_ERRORS:
            raise self.unavailable(f"changing the deployment of model '{model}'") from None
        if not ok:
            current = replies[0][0][1] if replies and replies[0] else None
            found = self.parse(key, current.value) if current is not None else None
            self.note(model, current.mod_revision if current is not None else seen + 1, found)
            raise DeploymentConflict(
                f"model '{model}': its deployment was changed by another replica meanwhile; "
                "this replica has applied the new state now: retry the change", found)
        revision = replies[0].response_put.header.revision
        newer = self._known.get(model, (0, None))
        self.note(model, revision, entry)
        if newer[0] > revision and self.on_superseded is not None:
            # A later change was applied while ours was in flight; once the caller has swapped
            # ours in (synchronously after this returns), put the later one back.
            asyncio.get_running_loop().call_soon(self.on_superseded, model, newer[1])

    async def audit(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append ``record`` under ``<prefix>/audit/`` with the wall-clock time; returns it."""
        now = time.time_ns()
        line = {
            "time": datetime.fromtimestamp(now / 1e9, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "unix": round(now / 1e9, 6),
            **record,
        }
        key = f"{self.audit_prefix}{now:020d}-{uuid.uuid4().hex[:8]}".encode()
        value = json.dumps(line, separators=(",", ":"), allow_nan=False).encode()
        try:
            await self.client.put(key, value)
        except _ETCD_ERRORS:
            raise self.unavailable("appending to the audit log") from None
        return line

    async def read_audit(self) -> list[dict[str, Any]]:
        """Every audit record, oldest first."""
        try:
            found = await self.client.get_prefix(self.audit_prefix.encode())
        except _ETCD_ERRORS:
            raise self.unavailable("reading the audit log") from None
        records = []
        for kv in sorted(found, key=lambda kv: kv.key):
            try:
                records.append(json.loads(kv.value))
            except ValueError:
                continue
        return records
