"""``make bench``: how fast the service is next to a bare server on the same stack.

Separate processes on loopback: the Stripe emulator (with an API latency),
the service (``fulfill serve``, SQLite and, when reachable, PostgreSQL), a
bare Starlette app under the same uvicorn settings (the ceiling), the
service's peer (``bench.peers.guide``: the code Stripe's fulfillment guide
leads a merchant to write, under gunicorn), and this package's async load
generator. See docs/benchmark.md for what is measured and the targets.
"""
