"""A stateful, offline Stripe emulator for Checkout: the API, a hosted page, webhooks, faults.

``create_app()`` gives the ASGI app; ``fulfill emulator`` runs it.
"""

from fulfill.emulator.app import Emulator, create_app

__all__ = ["Emulator", "create_app"]
