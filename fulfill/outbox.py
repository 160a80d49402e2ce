"""The demo's outbox viewer: ``GET /outbox`` lists the emails written there.

Only ``fulfill demo`` mounts it. Outbox files hold customers' download links
and licence keys: a production service never serves them, whatever its
settings (``create_app(..., show_outbox=True)`` is the demo's alone).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from email.message import EmailMessage
from html import escape
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from fulfill.mail.compose import parse_email
from fulfill.pages import PRIVATE_HEADERS, render_problem
from fulfill.presentation import TEMPLATES

NAME = re.compile(r"^cs_(?:test|live)_[A-Za-z0-9]{1,200}\.[a-z_]{1,32}\.eml$")
# The HTML part is the shop's own template, shown as it is: no script runs in it,
# and nothing it links to is fetched until clicked.
SANDBOX = {
    "Content-Security-Policy": "sandbox allow-popups; default-src 'none'; style-src 'unsafe-inline'"
}


@dataclass(frozen=True)
class Letter:
    name: str
    to: str
    subject: str
    date: str


def _read(path: Path) -> EmailMessage:
    return parse_email(path.read_bytes())


def letters(folder: Path) -> list[Letter]:
    """The emails in ``folder``, newest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.eml"), key=lambda p: p.stat().st_mtime, reverse=True):
        if NAME.match(path.name):
            message = _read(path)
            found.append(
                Letter(path.name, str(message["To"]), str(message["Subject"]), str(message["Date"]))
            )
    return found


class OutboxViewer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def index(self, request: Request) -> Response:
        found = await asyncio.to_thread(letters, self.folder)
        html = TEMPLATES.get_template("outbox.html").render(letters=found, folder=self.folder)
        return HTMLResponse(html, headers=PRIVATE_HEADERS)

    async def letter(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = self.folder / name
        if not NAME.match(name) or not path.is_file():
            return render_problem(
                request, 404, "not_found", "No such email", "The outbox has no email by that name."
            )
        data = await asyncio.to_thread(path.read_bytes)
        if request.query_params.get("raw") == "1":
            return Response(data, media_type="text/plain; charset=utf-8", headers=PRIVATE_HEADERS)
        body = parse_email(data).get_body(preferencelist=("html", "plain"))
        content = str(body.get_content()) if body is not None else ""
        if body is not None and body.get_content_type() == "text/plain":
            content = f"<pre>{escape(content)}</pre>"
        return HTMLResponse(content, headers={**PRIVATE_HEADERS, **SANDBOX})
