"""The private protobuf descriptor pool that holds Sluice's `inference.*` messages.

tritonclient registers messages with the same full names (`inference.ModelInferRequest`, ...) in
protobuf's default pool, and one pool cannot hold two files defining the same symbol. Our
generated modules therefore register into this pool instead (``python -m sluice.proto.generate``
rewrites them to do so), which lets Sluice and tritonclient live in one process. Both sets of
messages share the wire format, so bytes produced by one parse with the other.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
"""Pool for every descriptor generated from proto/*.proto; nothing else should be added."""
