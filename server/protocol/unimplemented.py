"""The Triton extensions Sluice does not implement (shared memory, trace and log settings):
each answers UNIMPLEMENTED naming the extension, whatever the request holds (offsets, paths),
with nothing read from it and nothing changed."""

from __future__ import annotations

import grpc

from sluice.proto import grpc_service_pb2 as pb


class UnimplementedExtensions:
    """Mixed into the inference servicer: the extension RPCs it refuses."""

    async def _unimplemented(self, what: str, context, response):
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details(f"{what} is not supported by Sluice")
        return response

    async def SystemSharedMemoryStatus(self, request, context):
        return await self._unimplemented(
            "system shared memory", context, pb.SystemSharedMemoryStatusResponse())

    async def SystemSharedMemoryRegister(self, request, context):
        return await self._unimplemented(
            "system shared memory", context, pb.SystemSharedMemoryRegisterResponse())

    async def SystemSharedMemoryUnregister(self, request, context):
        return await self._unimplemented(
            "system shared memory", context, pb.SystemSharedMemoryUnregisterResponse())

    async def CudaSharedMemoryStatus(self, request, context):
        return await self._unimplemented(
            "CUDA shared memory", context, pb.CudaSharedMemoryStatusResponse())

    async def CudaSharedMemoryRegister(self, request, context):
        return await self._unimplemented(
            "CUDA shared memory", context, pb.CudaSharedMemoryRegisterResponse())

    async def CudaSharedMemoryUnregister(self, request, context):
        return await self._unimplemented(
            "CUDA shared memory", context, pb.CudaSharedMemoryUnregisterResponse())

    async def TraceSetting(self, request, context):
        return await self._unimplemented("trace settings", context, pb.TraceSettingResponse())

    async def LogSettings(self, request, context):
        return await self._unimplemented("log settings", context, pb.LogSettingsResponse())
