"""The delivery engine: lanes, retry policy, circuit breakers, the dispatcher (DESIGN.md 2, 5)."""
