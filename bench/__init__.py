"""`botpulse bench`: every speed target of botpulse measured in one run, as figures and ratios.

The harness drives the services only through their public entry points (the `botpulse`
commands, HTTP, the Redis stream contract), so it keeps working while their internals change.
The bench process itself never opens embedded ClickHouse: chDB allows one engine path per
process, so each phase gives its services their own data directory and seeds it from a child.
"""
