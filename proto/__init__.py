"""Sluice wire protocol: generated KServe v2 / Triton gRPC messages and the tensor codec."""
