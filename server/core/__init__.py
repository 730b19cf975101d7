"""The serving core: asyncio and numpy only (no grpc, no protobuf, no model runtimes)."""
