"""The database: schema, migrations, queries; nothing else writes SQL."""

from fulfill.store.repository import Store

__all__ = ["Store"]
