"""KServe v2 REST beside gRPC (issue 17 item 1): the same servicer behind an HTTP codec, served
by aiohttp on the event loop grpc.aio runs on."""
