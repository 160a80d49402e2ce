"""``fulfill demo``: the whole product offline, with no Stripe account.

``runner`` starts SQLite in a temporary folder, the bundled Stripe emulator,
the service and a sample merchant system in one process; ``samples`` holds
the sample products (one per action) and their catalog; ``script`` plays the
scripted purchases of ``--headless`` and checks every outcome.
"""

from __future__ import annotations


def run_demo(port: int | None, *, headless: bool) -> int:
    """Run the demo; the exit code (headless: 0 only if every outcome was as expected)."""
    if headless:
        from fulfill.demo.script import headless as play

        return play(port)
    from fulfill.demo.runner import interactive

    return interactive(port or 8000)


__all__ = ["run_demo"]
