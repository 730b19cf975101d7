"""Sluice: a KServe v2 / Triton-compatible gRPC inference server."""

__version__ = "0.1.0"
