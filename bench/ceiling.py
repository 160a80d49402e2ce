"""The ceiling: a bare endpoint on the service's server stack, in its own process.

Starlette under uvicorn with the settings ``fulfill serve`` uses (uvloop and
httptools when installed, no access log, log level warning), answering 200
with a small JSON body: what one process of this stack can serve at all, so
the service's numbers can be read as a share of it.

``python -m bench.ceiling --port 8123 [--workers 2]``
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def ok(request: Request) -> Response:
    await request.body()
    return JSONResponse({"received": True})


app = Starlette(routes=[Route("/", ok, methods=["GET", "POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    uvicorn.run(
        "bench.ceiling:app" if args.workers > 1 else app,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers if args.workers > 1 else None,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
