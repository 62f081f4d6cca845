"""The demo's platform API: payments, transfers, loans, wealth orders and accounts.

It trusts what txgate tells it (``Txgate-Decision``, ``Txgate-Tier``) and echoes it back, so
the demo can show what reached the platform. ``python -m gateway.demo.upstream PORT`` serves it
alone on 127.0.0.1, as the README's quick start does."""

from __future__ import annotations

import itertools
import sys

from aiohttp import web

_ids = itertools.count(1)


async def _accept(request: web.Request, kind: str) -> web.Response:
    body = await request.json()
    return web.json_response({
        "id": f"{kind}_{next(_ids)}", "status": "accepted", "amount": body.get("amount"),
        "currency": body.get("currency"),
        "txgate": {"decision": request.headers.get("Txgate-Decision"),
                   "tier": request.headers.get("Txgate-Tier"),
                   "risk_score": request.headers.get("Txgate-Risk-Score")},
    }, status=201)


async def payments(request):
    return await _accept(request, "pay")


async def transfers(request):
    return await _accept(request, "trf")


async def loans(request):
    return await _accept(request, "loan")


async def wealth(request):
    return await _accept(request, "ord")


async def account(request):
    return web.json_response({"id": request.match_info["id"], "balance": "1520.40", "currency": "EUR",
                              "tier": request.headers.get("Txgate-Tier")})


def demo_upstream() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/payments", payments)
    app.router.add_post("/v1/transfers", transfers)
    app.router.add_post("/v1/loans/applications", loans)
    app.router.add_post("/v1/wealth/orders", wealth)
    app.router.add_get("/v1/accounts/{id}", account)
    return app


if __name__ == "__main__":
    web.run_app(demo_upstream(), host="127.0.0.1", port=int(sys.argv[1]), print=None,
                access_log=None)
