"""``GET /downloads/{token}``: the file a ``download`` action granted, while its link lasts.

The token (``fulfill.actions.download``) is checked before anything else: an
altered or foreign link is 403, a genuine one past its expiry 410, each with
a page that says what to do. A genuine link names a grant in the database,
and the grant the file: the response streams it from disk (``FileResponse``:
chunks, ranges, ``HEAD``), as an attachment under its own name.

The token is a key, like the landing page's session ID: the answer is never
cached nor sent on as a referrer, and the access log cuts it short.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import anyio.to_thread
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from fulfill import logs
from fulfill.actions.download import LinkExpired, LinkInvalid, read_token
from fulfill.pages import PRIVATE_HEADERS, render_problem
from fulfill.store.deliverables import Deliverables

log = logging.getLogger("fulfill.downloads")


def content_type(file_name: str) -> str:
    """The MIME type by the file's extension; ``application/octet-stream`` when unknown."""
    return mimetypes.guess_type(file_name)[0] or "application/octet-stream"


def content_disposition(file_name: str) -> str:
    """``attachment`` with the name as every browser reads it (RFC 6266, RFC 5987).

    A plain ASCII ``filename="…"`` for old clients (anything outside printable
    ASCII, quotes and backslashes replaced by ``_``), and ``filename*`` with
    the exact name percent-encoded as UTF-8 when that differs.
    """
    fallback = "".join(
        ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\' else "_" for ch in file_name
    )
    header = f'attachment; filename="{fallback or "download"}"'
    if fallback != file_name:
        header += f"; filename*=UTF-8''{quote(file_name, safe='')}"
    return header


class DownloadEndpoint:
    """``GET /downloads/{token}``."""

    def __init__(
        self, deliverables: Deliverables, key: bytes, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.deliverables = deliverables
        self.key = key
        self.clock = clock

    async def __call__(self, request: Request) -> Response:
        token = str(request.path_params.get("token", ""))
        try:
            claim = read_token(self.key, token, self.clock())
        except LinkExpired:
            return render_problem(
                request,
                410,
                LinkExpired.code,
                "This download link has expired",
                "Download links work for a limited time. Please contact the shop for a new link.",
            )
        except LinkInvalid:
            return render_problem(
                request,
                403,
                LinkInvalid.code,
                "This download link is not valid",
                "The link is damaged or incomplete. Please use the link on your order page, "
                "or contact the shop.",
            )
        try:
            grant = await self.deliverables.download(
                claim.session_id, claim.line_item_id, claim.file_name
            )
        except (SQLAlchemyError, OSError) as exc:
            log.warning("download unavailable: %s", type(exc).__name__)
            return render_problem(
                request,
                503,
                "temporarily_unavailable",
                "We could not start your download just now",
                "Please try the link again in a minute.",
            )
        if grant is None:
            # Signed by us, but no grant: the database was replaced or restored.
            return _gone(request)
        path = Path(grant.path)
        try:
            found = await anyio.to_thread.run_sync(os.stat, path)
        except OSError:
            found = None
        if found is None or not stat.S_ISREG(found.st_mode):
            with logs.bound(session_id=claim.session_id):
                log.warning("download file %s is missing", path)
            return _gone(request)
        return FileResponse(
            path,
            stat_result=found,
            media_type=content_type(grant.file_name),
            headers={
                **PRIVATE_HEADERS,
                "Content-Disposition": content_disposition(grant.file_name),
                "X-Content-Type-Options": "nosniff",
            },
        )


def _gone(request: Request) -> Response:
    return render_problem(
        request,
        404,
        "download_not_found",
        "This file is no longer available",
        "Please contact the shop; they can send it to you again.",
    )
