"""The review web app: FastAPI with server-rendered Jinja2 pages (no front-end build).

FastAPI because it is the well-kept Python framework we already ship (MLflow 3 serves with it,
so it is installed anyway), it validates request bodies with the pydantic models the project
uses for config, and its TestClient lets the safety rules be tested without a browser.

Safety: the CLI binds 127.0.0.1 unless told otherwise and then requires a token (16 characters
or more, sent as a cookie, ?token= or `Authorization: Bearer`); a request whose Host header is
not one of the server's names is refused, so a page on another name that resolves here (DNS
rebinding) cannot read the CSRF token; images are served by sha256 through `Results.image_file`
(no request path reaches the file system, no link in the results folder is followed); every
POST carries the page's CSRF token in a header and, when the browser sends one, an Origin of
this server (scheme, allowed name and port); a label is only taken for a scored row of the
loaded results, and a label value outside LABELS is refused with a message. A bulk label is the
same check per part (at most MAX_BULK parts a request), so it can do nothing a single one cannot.
"""

from __future__ import annotations

import hmac
import ipaddress
import mimetypes
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Sequence
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from anomaflow.model.operations.results import DECISIONS, SHA, SORTS, STATES, Page, Results, read_plain
from anomaflow.review.export import reviews_csv
from anomaflow.tasks.labels import LABELS, Conflict, LabelError, LabelRecord, LabelStore, check_label

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TOKEN_COOKIE = "anomaflow_review_token"
PER_PAGE = 50
GRID_PER_PAGE = 48  # divisible by 2, 3, 4, 6, 8: full rows at most window widths
MAX_BULK = 500
MIN_TOKEN = 16
ORDERS = ("desc", "asc")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD = ("0.0.0.0", "::", "")
DEFAULT_PORTS = {"http": 80, "https": 443}


class LabelIn(BaseModel):
    sha256: str = Field(max_length=80)
    model_version: str = Field(max_length=64)
    label: str = Field(max_length=16)
    reviewer: str = Field(max_length=120)
    note: str = ""
    seen: int | None = None


class BulkItem(BaseModel):
    sha256: str = Field(max_length=80)
    model_version: str = Field(max_length=64)
    seen: int | None = None


class BulkLabelIn(BaseModel):
    items: list[BulkItem] = Field(min_length=1)
    label: str = Field(max_length=16)
    reviewer: str = Field(max_length=120)
    note: str = ""


@dataclass(frozen=True)
class ListQuery:
    """The list's and the grid's filters, validated once for both."""

    decision: str = ""
    state: str = ""
    product: str = ""
    sort: str = "score"
    order: str = "desc"
    page: int = 1

    def link(self, **change) -> str:
        """The query string of these filters with `change` applied (empty values left out)."""
        return urlencode({k: v for k, v in {**asdict(self), **change}.items() if v not in ("", None)})


def list_query(
    request: Request,
    decision: str = "",
    state: str = "",
    product: str = "",
    sort: str = "score",
    order: str = "desc",
    page: int = 1,
) -> ListQuery:
    """The query of /parts and /grid, each value checked against the allowed ones (400 naming
    them); `product` against the model names in the results as loaded now."""
    results: Results = request.app.state.results
    results.refresh()
    if state:
        one_of("review state", state, STATES)
    if decision:
        one_of("decision", decision, DECISIONS)
    if product:
        one_of("product", product, results.products())
    one_of("sort", sort, SORTS)
    one_of("order", order, ORDERS)
    return ListQuery(decision, state, product, sort, order, page)


Filters = Annotated[ListQuery, Depends(list_query)]


def allowed_names(host: str, extra: Sequence[str], token: str | None) -> frozenset[str] | None:
    """The Host header names the app answers to; None: any. Bound to a wildcard address with a
    token and no --allowed-host, any name reaches it and the token is the guard (a rebinding page
    has neither the token nor its cookie). Otherwise: the bound host, the loopback names when
    that is loopback (or a wildcard without a token), and the names given."""
    host = host.strip("[]").lower()
    if host in WILDCARD and token is not None and not extra:
        return None
    names = {host, *(n.strip("[]").lower() for n in extra)} - set(WILDCARD)
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback or host in WILDCARD:
        names.update(LOOPBACK_NAMES)
    return frozenset(names)


def host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    """(name, port) of a Host header or an Origin's netloc; None when it is not a plain host[:port]."""
    try:
        parts = urlsplit(f"//{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.netloc != netloc or "@" in netloc or scheme not in DEFAULT_PORTS:
        return None
    return parts.hostname, port or DEFAULT_PORTS[scheme]


def same_origin(origin: str, scheme: str, ours: tuple[str, int], names: frozenset[str] | None) -> bool:
    """Origin is this server: the request's scheme, its port and an allowed name (the request's
    own name only when any name is allowed, i.e. behind the token)."""
    o = urlsplit(origin)
    theirs = host_port(o.netloc, o.scheme)
    return (
        o.scheme == scheme
        and theirs is not None
        and theirs[1] == ours[1]
        and (theirs[0] in names if names is not None else theirs[0] == ours[0])
    )


def not_valid(exc: RequestValidationError) -> JSONResponse:
    """Field and message only, never the input: it may be NaN or Infinity, which JSON cannot
    encode. Query values 400, bodies 422."""
    errors = exc.errors()
    where = [".".join(p for p in e["loc"][1:] if isinstance(p, str)) or e["loc"][0] for e in errors]
    message = "; ".join(f"{w}: {e['msg']}" for w, e in zip(where, errors))
    return JSONResponse(
        {"error": message or "malformed request"},
        status_code=422 if any(e["loc"][:1] == ("body",) for e in errors) else 400,
    )


def one_of(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise HTTPException(400, f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")


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
        bars.append(
            f'<rect x="{i * bw:.1f}" y="{height - ha:.1f}" width="{bw - 1:.1f}" height="{ha:.1f}" fill="#9aa5b1"/>'
        )
        bars.append(
            f'<rect x="{i * bw:.1f}" y="{height - ha - hb:.1f}" width="{bw - 1:.1f}" height="{hb:.1f}" fill="#d64545"/>'
        )
    tx = width * (h["threshold"] - lo) / (hi - lo) if hi > lo else 0
    return (
        f'<svg role="img" aria-label="score histogram" width="{width}" height="{height + 18}" '
        f'viewBox="0 0 {width} {height + 18}">'
        + "".join(bars)
        + f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="0" y2="{height}" stroke="#111" stroke-dasharray="4 3"/>'
        + f'<text x="{min(tx + 4, width - 120):.1f}" y="12" font-size="11">threshold {h["threshold"]:.4g}</text>'
        + f'<text x="0" y="{height + 14}" font-size="11">{lo:.4g}</text>'
        + f'<text x="{width - 60}" y="{height + 14}" font-size="11">{hi:.4g}</text></svg>'
    )


def create_app(
    results_dirs: list[str | Path],
    db_url: str,
    token: str | None = None,
    *,
    host: str = "127.0.0.1",
    allowed_hosts: Sequence[str] = (),
) -> FastAPI:
    """The app over `results_dirs` with labels in `db_url`. `host`: the address it will be bound
    to; `allowed_hosts`: more names it answers to (a DNS name, a proxy's)."""
    if token is not None and len(token) < MIN_TOKEN:
        raise ValueError(
            f"the review token is {len(token)} characters; use at least {MIN_TOKEN} (a long random string: "
            "python -c 'import secrets; print(secrets.token_urlsafe())')"
        )
    names = allowed_names(host, allowed_hosts, token)
    results = Results(results_dirs)
    store = LabelStore(db_url)
    csrf = secrets.token_urlsafe(32)
    app = FastAPI(title="anomaflow review", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.results, app.state.store, app.state.csrf = results, store, csrf

    @app.exception_handler(RequestValidationError)
    async def _not_valid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return not_valid(exc)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.url.path == "/health":  # for container health checks: says nothing about the data
            return Response("ok", media_type="text/plain")
        given_host = request.headers.get("host", "")
        ours = host_port(given_host, request.url.scheme)
        if ours is None:
            return PlainTextResponse(f"malformed Host header {given_host!r}", status_code=400)
        if names is not None and ours[0] not in names:
            return PlainTextResponse(
                f"unknown Host {given_host!r}: this server answers to {', '.join(sorted(names))}; "
                "start it with --allowed-host NAME to add a name",
                status_code=400,
            )
        if token is not None:
            scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
            given = (
                request.query_params.get("token")
                or request.cookies.get(TOKEN_COOKIE)
                or (bearer if scheme.lower() == "bearer" else "")
            )
            if not hmac.compare_digest(given.encode(), token.encode()):
                return Response(
                    "a token is required: open the link the review command printed (…?token=…)", status_code=401
                )
        if request.method not in ("GET", "HEAD"):
            if not hmac.compare_digest(request.headers.get("x-csrf-token", "").encode(), csrf.encode()):
                return JSONResponse({"error": "missing or wrong CSRF token: reload the page"}, status_code=403)
            origin = request.headers.get("origin")
            if origin is not None and not same_origin(origin, request.url.scheme, ours, names):
                return JSONResponse({"error": f"cross-origin request from {origin} refused"}, status_code=403)
        response = await call_next(request)
        if token is not None and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        return response

    def latest_labels() -> dict[tuple[str, str], str]:
        return {k: v.label for k, v in store.latest().items()}

    def listing(query: ListQuery, latest: dict[tuple[str, str], str], per_page: int) -> Page:
        return results.page(
            latest,
            decision=query.decision,
            state=query.state,
            product=query.product,
            sort=query.sort,
            descending=query.order == "desc",
            page=query.page,
            per_page=per_page,
        )

    def save_labels(
        items: Sequence[BulkItem], label: str, reviewer: str, note: str
    ) -> tuple[list[LabelRecord], list[dict]]:
        """The one way a label is written, for one part or many: each part needs a scored row of
        that model version (404 no such part, 422 no verdict to label) and no label newer than its
        `seen` (409). Returns the saved records and the refusals, each with its status and reason.
        A LabelError (unknown label, no reviewer) refuses them all: it is raised."""
        check_label(label, reviewer, note)
        results.refresh()
        refused: list[dict] = []
        todo: dict[tuple[str, str], int | None] = {}
        given: set[tuple[str, str]] = set()
        for item in items:
            key = (item.sha256, item.model_version)
            if key in given:  # a part listed twice is one label
                continue
            given.add(key)
            why = results.label_refusal(*key)
            if why is None:
                todo[key] = item.seen
            else:
                status = 404 if results.rows_for(item.sha256).empty else 422
                refused.append({"sha256": key[0], "model_version": key[1], "status": status, "error": why})
        saved = []
        for (sha256, version), out in store.add_many(
            [(*k, seen) for k, seen in todo.items()], label, reviewer, note
        ).items():
            if isinstance(out, Conflict):
                refused.append(
                    {
                        "sha256": sha256,
                        "model_version": version,
                        "status": 409,
                        "error": str(out),
                        "latest": out.latest.to_dict(),
                    }
                )
            else:
                saved.append(out)
        return saved, refused

    def render(request: Request, name: str, **ctx) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, name, {"csrf": csrf, "labels": LABELS, **ctx})

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request) -> HTMLResponse:
        results.refresh()
        latest = latest_labels()
        return render(
            request,
            "overview.html",
            counts=results.counts(),
            total=len(results.frame),
            models=results.models(),
            histogram=histogram_svg(results.histogram()),
            reviewed=results.reviewed_counts(latest),
            products=results.product_summary(latest) if len(results.products()) > 1 else [],
            folders=results.folders,
            drift=results.drift(),
            waiting=results.waiting(),
            decisions=DECISIONS,
        )

    @app.get("/parts", response_class=HTMLResponse)
    def parts(request: Request, query: Filters) -> HTMLResponse:
        return render(
            request,
            "parts.html",
            page=listing(query, latest_labels(), PER_PAGE),
            query=query,
            states=STATES,
            decisions=DECISIONS,
            products=results.products(),
        )

    @app.get("/grid", response_class=HTMLResponse)
    def grid(request: Request, query: Filters) -> HTMLResponse:
        """Thumbnails to label many parts at once; each cell carries the id of its part's latest
        label as `seen`, so a label someone writes after this page was rendered is a conflict."""
        records = store.latest()
        p = listing(query, {k: v.label for k, v in records.items()}, GRID_PER_PAGE)
        for r in p.rows:
            rec = records.get((r["sha256"], r["model_version"]))
            r["seen"] = rec.id if rec is not None else None
        return render(
            request,
            "grid.html",
            page=p,
            query=query,
            states=STATES,
            decisions=DECISIONS,
            products=results.products(),
            max_bulk=MAX_BULK,
        )

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
        return render(
            request,
            "part.html",
            row=row,
            paths=sorted(set(rows["path"])),
            history=history,
            seen=current[-1].id if current else None,
            next_sha=results.neighbours(sha256, latest),
            has_defect_overlay=results.image_file(sha256, "defect_overlay") is not None,
        )

    @app.get("/image/{sha256}/{kind}")
    def image(sha256: str, kind: str) -> Response:
        path = results.image_file(sha256, kind)
        data = read_plain(path) if path is not None else None
        if path is None or data is None:
            raise HTTPException(404, "no such image")
        return Response(
            data, media_type=mimetypes.guess_type(path.name)[0], headers={"Cache-Control": "private, max-age=3600"}
        )

    @app.get("/export/reviews.csv")
    def export_reviews() -> Response:
        """The labelled parts for a spreadsheet (cells that would be formulas neutralised)."""
        results.refresh()
        rows = results.frame.drop_duplicates(["sha256", "model_version"], keep="last").to_dict("records")
        return Response(
            reviews_csv(rows, store.latest()),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="reviews.csv"'},
        )

    @app.post("/api/labels")
    def add_label(body: LabelIn) -> JSONResponse:
        try:
            item = BulkItem(sha256=body.sha256, model_version=body.model_version, seen=body.seen)
            saved, refused = save_labels([item], body.label, body.reviewer, body.note)
        except LabelError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        if refused:
            why = refused[0]
            return JSONResponse({k: v for k, v in why.items() if k in ("error", "latest")}, status_code=why["status"])
        return JSONResponse({"label": saved[0].to_dict(), "next": results.neighbours(body.sha256, latest_labels())})

    @app.post("/api/labels/bulk")
    def add_labels(body: BulkLabelIn) -> JSONResponse:
        """One label for up to MAX_BULK parts: 200 with what was saved and what was refused per
        part (a part refused does not stop the others); 422 when the label itself is refused."""
        if len(body.items) > MAX_BULK:
            return JSONResponse(
                {"error": f"{len(body.items)} parts in one bulk label; at most {MAX_BULK}: label a smaller selection"},
                status_code=422,
            )
        try:
            saved, refused = save_labels(body.items, body.label, body.reviewer, body.note)
        except LabelError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        return JSONResponse({"saved": [r.to_dict() for r in saved], "refused": refused})

    return app
