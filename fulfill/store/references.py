"""Finding a session by its log reference (``fulfill.logs.log_reference``).

Logs never carry a whole session ID, only ``cs_test_a1b2c3d4-9f86d08188``:
the ID's first characters and a hash of it. Nothing extra is stored for it:
the records whose ID starts with the reference's prefix are read, and the
one whose ID hashes to the reference is it.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from fulfill.logs import REFERENCE_RE, matches_reference
from fulfill.store import database
from fulfill.store.schema import fulfillments


async def session_for_reference(engine: AsyncEngine, reference: str) -> str | None:
    """The recorded session whose log reference is ``reference``, or None."""
    found = REFERENCE_RE.fullmatch(reference)
    if found is None:
        return None
    # autoescape: the "_" of "cs_test_" is a LIKE wildcard.
    query = select(fulfillments.c.session_id).where(
        fulfillments.c.session_id.startswith(found.group(1), autoescape=True)
    )
    async with database.read(engine) as connection:
        for (session_id,) in await connection.execute(query):
            if matches_reference(str(session_id), reference):
                return str(session_id)
    return None
