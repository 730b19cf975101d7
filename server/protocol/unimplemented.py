"""The Triton extensions Sluice does not implement (CUDA shared memory, trace and log
settings): each answers UNIMPLEMENTED naming the extension, whatever the request holds
(offsets, handles, paths), with nothing read from it and nothing changed. (System shared
memory is :mod:`.shm_service`'s.)"""

from __future__ import annotations

import grpc

from sluice.proto import grpc_service_pb2 as pb

#: Why CUDA shared memory is refused, said in the message.
_NO_CUDA = (" (it needs a GPU and CUDA IPC, which Sluice does not implement; use system shared "
            "memory)")


class UnimplementedExtensions:
    """Mixed into the inference servicer: the extension RPCs it refuses."""

    async def _unimplemented(self, what: str, context, response, why: str = ""):
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details(f"{what} is not supported by Sluice{why}")
        return response

    async def CudaSharedMemoryStatus(self, request, context):
        return await self._unimplemented(
            "CUDA shared memory", context, pb.CudaSharedMemoryStatusResponse(), _NO_CUDA)

    async def CudaSharedMemoryRegister(self, request, context):
        return await self._unimplemented(
            "CUDA shared memory", context, pb.CudaSharedMemoryRegisterResponse(), _NO_CUDA)

    async def CudaSharedMemoryUnregister(self, request, context):
        return await self._unimplemented(
            "CUDA shared memory", context, pb.CudaSharedMemoryUnregisterResponse(), _NO_CUDA)

    async def TraceSetting(self, request, context):
        return await self._unimplemented("trace settings", context, pb.TraceSettingResponse())

    async def LogSettings(self, request, context):
        return await self._unimplemented("log settings", context, pb.LogSettingsResponse())
