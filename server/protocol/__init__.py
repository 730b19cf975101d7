"""The gRPC transport: the only package in ``server`` that imports grpc or protobuf messages."""
