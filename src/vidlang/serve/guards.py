"""HTTP edges of ``vidlang serve``: the one error body, its OpenAPI entries, request guards (Host header,
cross-origin writes) and scrubbing of file-system paths from anything a client reads.

Every 4xx/5xx body is ``{"detail": "<message>"}`` (:class:`ErrorOut`), request validation errors included,
and each route documents the statuses it answers with (:func:`error_responses`).
"""
import logging
import re
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from vidlang.errors import CheckpointError, ConfigError, DataError, VidlangError
from vidlang.serve.media import MediaRefused, UnsupportedMedia

log = logging.getLogger("vidlang.serve")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS", "TRACE")
_STATUS = ((UnsupportedMedia, 415), (MediaRefused, 403), (DataError, 422), (ConfigError, 400), (CheckpointError, 409))
_DESCRIPTIONS = {400: "bad request (malformed body or header, bad settings)", 403: "refused (cross-origin write, "
                 "a path outside the media root)", 404: "not found", 409: "not possible with what the server loaded",
                 413: "upload too large", 415: "not a video the server reads", 422: "invalid input",
                 503: "no captioner loaded"}
# an absolute POSIX path of two or more parts (quoted or not): /tmp/x/upload.bin, '/home/a/run/step-1'
_PATH = re.compile(r"(?<![\w.~:/-])/(?:[^\s'\"/<>]+/)+[^\s'\"/<>,;:)\]}]*")


class ErrorOut(BaseModel):
    """The body of every error response."""

    detail: str


def _decimal_digits(value):
    """Refuse what pydantic's lax int would coerce from a URL ('+0.0', '1e3', non-ASCII digits)."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("expected decimal digits")
    return value


DecimalDigits = BeforeValidator(_decimal_digits)  # after the Path/Query marker, so the schema keeps its bounds


def error_responses(*codes: int) -> dict:
    """``responses=`` of a route that answers with these error statuses (all with :class:`ErrorOut`; a 400
    may also be Starlette's plain-text "Invalid host header" of the Host check)."""
    out = {code: {"model": ErrorOut, "description": _DESCRIPTIONS[code]} for code in codes}
    if 400 in out:
        out[400]["content"] = {"text/plain": {"schema": {"type": "string"}}}
        out[400]["description"] += "; a Host header the server does not answer to (text/plain)"
    return out


def scrub_paths(text: str) -> str:
    """``text`` with absolute file-system paths replaced by ``<path>``."""
    return _PATH.sub("<path>", text)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": scrub_paths(message)}, status_code=status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_errors(app: FastAPI) -> None:
    """Every error as :class:`ErrorOut` JSON, paths scrubbed; a bug is logged and answered 500."""

    @app.exception_handler(VidlangError)
    async def vidlang_error(request: Request, exc: VidlangError):
        return _error(next((code for kind, code in _STATUS if isinstance(exc, kind)), 400), str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        response = _error(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc))

    @app.exception_handler(MultiPartException)
    async def multipart_error(request: Request, exc: MultiPartException):
        return _error(400, f"bad multipart body: {exc.message}")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):  # a bug: logged, and said plainly
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal server error ({type(exc).__name__})")

    @app.middleware("http")
    async def no_sniff(request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response


def allowed_hosts_for(bind: str, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Host-header names the server answers to: the loopback names, the bound host (unless a wildcard
    address: then only ``extra`` adds names) and ``extra`` (``--allowed-host``)."""
    hosts = list(LOOPBACK_HOSTS)
    if bind not in WILDCARD_BINDS and bind not in ("::1",) + LOOPBACK_HOSTS:
        hosts.append(f"[{bind}]" if ":" in bind else bind)
    for h in extra:
        h = h.strip().lower()
        if not h or "/" in h or (h.startswith("*") and not h.startswith("*.")) or "*" in h[1:]:
            raise ConfigError(f"--allowed-host {h!r}: give a host name or IP (or *.domain), no scheme or port")
        hosts.append(f"[{h}]" if ":" in h and not h.startswith("[") else h)
    return list(dict.fromkeys(h.lower() for h in hosts))


def cross_origin(method: str, headers) -> str | None:
    """Why a state-changing request (POST/PUT/DELETE/...) comes from another origin, or None.

    A browser names the page that sent a request in ``Origin`` (else ``Referer``) and, lately, says
    ``Sec-Fetch-Site``; it must be this server (the ``Host`` it was sent to, which the host check vets).
    A request with none of them (curl, scripts) is not a browser's cross-site request and passes."""
    if method.upper() in SAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site is {site}"
    origin = headers.get("origin") or headers.get("referer")
    if origin is None:
        return None
    try:
        parts = urlsplit(origin)
        netloc = parts.netloc.lower()
    except ValueError:
        return "the Origin header is malformed"
    if parts.scheme not in ("http", "https") or not netloc or netloc != headers.get("host", "").lower():
        return "the request comes from another origin"
    return None


def install_guards(app: FastAPI, allowed_hosts: list[str]) -> None:
    """Refuse requests whose Host is not one of ``allowed_hosts`` (DNS rebinding; Starlette's
    TrustedHostMiddleware, 400) and cross-origin state-changing requests (CSRF; 403)."""

    @app.middleware("http")
    async def same_origin_writes(request: Request, call_next):
        why = cross_origin(request.method, request.headers)
        if why is not None:
            return _error(403, f"cross-origin {request.method} refused: {why}")
        return await call_next(request)

    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts, www_redirect=False)
