"""The system shared-memory RPCs (Triton's ``system_shared_memory`` extension), mixed into the
inference servicer: register, status, unregister over its :class:`.SharedMemoryRegions`.

Registering names an object on the server's host, so it is taken only from a client on that
host (a loopback or Unix-socket peer): a remote client cannot share memory with the server,
and must not make it map objects other programs left there.
"""

from __future__ import annotations

from sluice.proto import grpc_service_pb2 as pb
from sluice.server.errors import Code, SluiceError
from sluice.server.protocol.shm_regions import SharedMemoryRegions
from sluice.server.protocol.status import fail

#: Peer address prefixes of clients on this host (grpc's ``context.peer()`` forms).
_LOCAL_PEERS = ("ipv4:127.", "ipv6:[::1]", "ipv6:[::ffff:127.", "unix:", "unix-abstract:")


class NotOnThisHost(SluiceError):
    """Shared memory asked for by a client on another host."""

    code = Code.FAILED_PRECONDITION


class SystemSharedMemoryService:
    """The three RPCs; ``shm`` is the servicer's regions."""

    shm: SharedMemoryRegions

    async def SystemSharedMemoryStatus(self, request, context):
        try:
            regions = self.shm.status(request.name)
        except SluiceError as exc:
            fail(context, exc)
            return pb.SystemSharedMemoryStatusResponse()
        return pb.SystemSharedMemoryStatusResponse(regions={
            region.name: pb.SystemSharedMemoryStatusResponse.RegionStatus(
                name=region.name, key=region.key, offset=region.offset,
                byte_size=region.byte_size,
            )
            for region in regions
        })

    async def SystemSharedMemoryRegister(self, request, context):
        try:
            peer = context.peer() or ""
            if not peer.startswith(_LOCAL_PEERS):
                raise NotOnThisHost(
                    f"failed to register shared memory region '{request.name}': system shared "
                    "memory is for clients on the server's own host (this one connected over "
                    "the network)"
                )
            await self.shm.register(request.name, request.key, request.offset, request.byte_size)
        except SluiceError as exc:
            fail(context, exc)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context):
        self.shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()
