"""Model runtimes. Each exposes a synchronous ``run`` called on executor threads."""
