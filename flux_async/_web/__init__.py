"""Web backends: BFL webhooks and their ASGI receiver, orphaned results, the event stream."""
