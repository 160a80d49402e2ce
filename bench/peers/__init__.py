"""Peers of the service in ``make bench``: what a merchant would run instead of it.

Not part of the service, and written to be faithful to their sources rather
than to this project's rules: each is measured beside ``fulfill serve`` in
the same run, against the same emulator and load (docs/benchmark.md).
"""
