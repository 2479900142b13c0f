"""The delivery engine: lanes, retry policy, circuit breakers, the dispatcher (docs/delivery.md)."""
