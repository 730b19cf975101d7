"""The request path, asyncio and numpy only: repository, model versions, admission, queues,
batch cutting, the batcher and its instance threads, statistics. Knows nothing of aliases, routes,
shadows or canaries (those are ``sluice.server.rollout``, which uses this package, never the
reverse)."""
