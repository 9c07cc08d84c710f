"""Observers of finished requests: metrics, tracing and logs. They read the request record,
never the parts that fill it."""
