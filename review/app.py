"""The review web app: FastAPI with server-rendered Jinja2 pages (no front-end build).

FastAPI because it is the well-kept Python framework we already ship (MLflow 3 serves with it,
so it is installed anyway), it validates request bodies with the pydantic models the project
uses for config, and its TestClient lets the safety rules be tested without a browser.

Safety: the CLI binds 127.0.0.1 unless told otherwise and then requires a token; images are
served by sha256 through `Results.image_file` (no request path reaches the file system); every
POST carries the page's CSRF token in a header and, when the browser sends one, an Origin of
this server; a label value outside LABELS is refused with a message.
"""
from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from urllib.parse import urlparse

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from review.results import SHA, STATES, Results
from review.store import LABELS, Conflict, LabelError, LabelStore

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TOKEN_COOKIE = "anomaflow_review_token"
PER_PAGE = 50


class LabelIn(BaseModel):
    sha256: str = Field(max_length=80)
    model_version: str = Field(max_length=64)
    label: str = Field(max_length=16)
    reviewer: str = Field(max_length=120)
    note: str = ""
    seen: int | None = None


def histogram_svg(h: dict, width: int = 640, height: int = 160) -> str:
    """The score histogram (NORMAL grey, DEFECT red) with the threshold as a line: plain SVG."""
    if not h["edges"]:
        return '<p class="muted">no scored images yet</p>'
    n = len(h["normal"])
    top = max(1, max(a + b for a, b in zip(h["normal"], h["defect"])))
    bw = width / n
    lo, hi = h["edges"][0], h["edges"][-1]
    bars = []
    for i, (a, b) in enumerate(zip(h["normal"], h["defect"])):
        ha, hb = height * a / top, height * b / top
        bars.append(f'<rect x="{i * bw:.1f}" y="{height - ha:.1f}" width="{bw - 1:.1f}" height="{ha:.1f}" fill="#9aa5b1"/>')
        bars.append(f'<rect x="{i * bw:.1f}" y="{height - ha - hb:.1f}" width="{bw - 1:.1f}" height="{hb:.1f}" fill="#d64545"/>')
    tx = width * (h["threshold"] - lo) / (hi - lo) if hi > lo else 0
    return (f'<svg role="img" aria-label="score histogram" width="{width}" height="{height + 18}" viewBox="0 0 {width} {height + 18}">'
            + "".join(bars)
            + f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="0" y2="{height}" stroke="#111" stroke-dasharray="4 3"/>'
            + f'<text x="{min(tx + 4, width - 120):.1f}" y="12" font-size="11">threshold {h["threshold"]:.4g}</text>'
            + f'<text x="0" y="{height + 14}" font-size="11">{lo:.4g}</text>'
            + f'<text x="{width - 60}" y="{height + 14}" font-size="11">{hi:.4g}</text></svg>')


def create_app(results_dirs: list[str | Path], db_url: str, token: str | None = None) -> FastAPI:
    results = Results(results_dirs)
    store = LabelStore(db_url)
    csrf = secrets.token_urlsafe(32)
    app = FastAPI(title="anomaflow review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.results, app.state.store, app.state.csrf = results, store, csrf

    @app.middleware("http")
    async def guard(request: Request, call_next):  # noqa: ANN001, ANN202
        if request.url.path == "/health":  # for container health checks: says nothing about the data
            return Response("ok", media_type="text/plain")
        if token is not None:
            given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or \
                request.headers.get("authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return Response("a token is required: open the link the review command printed (…?token=…)", status_code=401)
        if request.method not in ("GET", "HEAD"):
            if not hmac.compare_digest(request.headers.get("x-csrf-token", "").encode(), csrf.encode()):
                return JSONResponse({"error": "missing or wrong CSRF token: reload the page"}, status_code=403)
            origin = request.headers.get("origin")
            if origin and urlparse(origin).netloc != request.headers.get("host"):
                return JSONResponse({"error": f"cross-origin request from {origin} refused"}, status_code=403)
        response = await call_next(request)
        if token is not None and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    def latest_labels() -> dict[tuple[str, str], str]:
        return {k: v.label for k, v in store.latest().items()}

    def render(request: Request, name: str, **ctx) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, name, {"csrf": csrf, "labels": LABELS, **ctx})

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> HTMLResponse:
        results.refresh()
        latest = latest_labels()
        reviewed: dict[str, int] = {}
        for label in latest.values():
            reviewed[label] = reviewed.get(label, 0) + 1
        return render(request, "overview.html", counts=results.counts(), total=len(results.frame), models=results.models(),
                      histogram=histogram_svg(results.histogram()), reviewed=reviewed, folders=results.folders, drift=results.drift(),
                      waiting=results.waiting())

    @app.get("/parts", response_class=HTMLResponse)
    def parts(request: Request, decision: str = "", state: str = "", sort: str = "score", order: str = "desc", page: int = 1) -> HTMLResponse:
        results.refresh()
        if state and state not in STATES:
            raise HTTPException(400, f"unknown review state {state!r}; expected one of {', '.join(STATES)}")
        p = results.page(latest_labels(), decision=decision, state=state, sort=sort, descending=order != "asc", page=page, per_page=PER_PAGE)
        return render(request, "parts.html", page=p, decision=decision, state=state, sort=sort, order=order, states=STATES)

    @app.get("/parts/{sha256}", response_class=HTMLResponse)
    def part(request: Request, sha256: str) -> HTMLResponse:
        results.refresh()
        rows = results.rows_for(sha256) if SHA.match(sha256) else results.frame.iloc[0:0]
        if rows.empty:
            raise HTTPException(404, "no inspected part with this sha256")
        row = rows.iloc[-1].to_dict()
        history = store.history(sha256)
        current = [h for h in history if h.model_version == row["model_version"]]
        latest = latest_labels()
        return render(request, "part.html", row=row, paths=sorted(set(rows["path"])), history=history,
                      seen=current[-1].id if current else None, next_sha=results.neighbours(sha256, latest),
                      has_defect_overlay=results.image_file(sha256, "defect_overlay") is not None)

    @app.get("/image/{sha256}/{kind}")
    def image(sha256: str, kind: str) -> FileResponse:
        path = results.image_file(sha256, kind)
        if path is None:
            raise HTTPException(404, "no such image")
        return FileResponse(path, headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/labels")
    def add_label(body: LabelIn) -> JSONResponse:
        if results.rows_for(body.sha256).empty:
            return JSONResponse({"error": "no inspected part with this sha256"}, status_code=404)
        try:
            rec = store.add(body.sha256, body.model_version, body.label, body.reviewer, body.note, body.seen)
        except LabelError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        except Conflict as exc:
            return JSONResponse({"error": str(exc), "latest": exc.latest.to_dict()}, status_code=409)
        return JSONResponse({"label": rec.to_dict(), "next": results.neighbours(body.sha256, latest_labels())})

    return app
