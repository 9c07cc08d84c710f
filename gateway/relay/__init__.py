"""The exchange with a worker: the upstream client (one layer, one error mapping, retries),
the relay itself, SSE framing, deadlines, usage reading."""
