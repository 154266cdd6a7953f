"""The web console (issue 11): a page at / and the JSON API under /api/ that it reads.

Reading. The page and its two static files hold no data and are always
served. Every other GET under /api/ (/api/running, /api/queue, /api/dead,
/api/outcomes, /api/outcomes/minutes, /api/jobs, /api/jobs/ID, /api/config, and
any route added later) passes `read_guard`, which the router applies to all of
them but the public ones (httpserver.PUBLIC_API): they answer without a token
only when the endpoint is bound to loopback, and then only to a loopback Host
header, so a DNS-rebinding page cannot read them through the victim's browser.
Bound anywhere else, they need the bearer token, and with no token configured
they are refused. /api/status, /metrics and the
probes keep the rules of the core endpoint (`drainpool reload` and `status`
read /api/status without credentials).

Actions (retry, purge, reload, cancel a job) are off unless `console.actions = true`. Then
each needs the bearer token (compared in constant time), the header
`X-Drainpool-CSRF: 1` (a cross-site form cannot set it and a cross-site fetch
cannot send it without a CORS preflight, which this server never grants), a
same-origin Origin when the browser sends one, and a JSON body; each is logged
with the caller's address, whatever the answer.

Every console response carries a content security policy that allows only
this origin's own script and style, so even a rendering mistake cannot run an
inline script from a payload; console.js also renders data with textContent only.

Over 400 lines on purpose: every route and its guard sit together, so a
reviewer of the console's security reads one file, not one per route.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from drainpool import __version__
from drainpool.httpserver import BodyTooLarge, Handler, Route
from drainpool.queue.base import (
    CancelEffect,
    CancelResult,
    JobNotFound,
    JobState,
    Queue,
    QueueError,
    QueueUnavailable,
)
from drainpool.queue.outcome_minutes import OUTCOMES
from drainpool.settings import ConsoleSettings

log = logging.getLogger("drainpool.console")

STATIC_DIR = Path(__file__).with_name("console")
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/console.css": ("console.css", "text/css; charset=utf-8"),
    "/static/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/static/chart.js": ("chart.js", "text/javascript; charset=utf-8"),
    "/static/jobpage.js": ("jobpage.js", "text/javascript; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none';"
    " frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
CSRF_HEADER = "X-Drainpool-CSRF"
MAX_LIMIT = 1000  # rows of one dead-letter or outcome answer
MAX_IDS = 1000  # ids in one retry or purge
MAX_REASON = 500  # characters of a cancel's reason
CHART_SECONDS = 3600  # the outcomes chart's span: the last hour, minute by minute


@dataclass(frozen=True, slots=True, eq=False)  # never compared: no generated __eq__/__hash__
class ConsoleSource:
    """What the console reads and asks for; the supervisor provides each callable."""

    status: Callable[[], dict[str, Any]]
    queue: Callable[[], Queue | None]
    outcomes: Callable[[], list[dict[str, Any]]]
    settings: Callable[[], ConsoleSettings]
    request_reload: Callable[[], None]
    schedules: Callable[[], list[dict[str, Any]]] = list  # issue 20: name, task, next tick ...


class Refused(Exception):
    """A request the console will not serve: HTTP status and the reason shown to the caller."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Console:
    """Builds the GET and POST routes the HTTP server dispatches to."""

    def __init__(self, source: ConsoleSource) -> None:
        self.source = source
        # Each read once, at its first request (an idle daemon holds none, issue 17): the
        # files ship with the package and never change under a running daemon.
        self._static: dict[str, tuple[bytes, str]] = {}

    def get_routes(self) -> dict[str, Route]:
        routes: dict[str, Route] = {path: self._serve_static for path in STATIC_FILES}
        # The read guard is the router's (httpserver.PUBLIC_API, Endpoints.read_guard), so a
        # route added anywhere cannot forget it; /api/console is public there.
        routes["/api/console"] = self._guarded(self._console_info)
        routes["/api/running"] = self._guarded(self._running)
        routes["/api/queue"] = self._guarded(self._queue)
        routes["/api/dead"] = self._guarded(self._dead)
        routes["/api/outcomes"] = self._guarded(self._outcomes)
        routes["/api/outcomes/minutes"] = self._guarded(self._outcome_minutes)
        routes["/api/jobs"] = self._guarded(self._jobs)
        routes["/api/jobs/"] = self._guarded(self._job)  # /api/jobs/ID (one level below)
        routes["/api/schedules"] = self._guarded(lambda _handler: self.source.schedules())
        return routes

    def post_routes(self) -> dict[str, Route]:
        return {
            "/api/dead/retry": self._action("dead_retry", self._dead_retry),
            "/api/dead/purge": self._action("dead_purge", self._dead_purge),
            "/api/reload": self._action("reload", self._reload),
            # /api/jobs/ID/cancel: the "*" stands for the id (httpserver's post_route).
            "/api/jobs/*/cancel": self._action("cancel", self._cancel),
        }

    # -- responses ------------------------------------------------------------

    def _serve_static(self, handler: Handler) -> None:
        path = handler.path.split("?", 1)[0]
        if path not in self._static:  # two first requests at once both read it: harmless
            name, kind = STATIC_FILES[path]
            self._static[path] = ((STATIC_DIR / name).read_bytes(), kind)
        body, kind = self._static[path]
        handler.reply(200, body, kind, SECURITY_HEADERS)

    def _json(
        self, handler: Handler, code: int, data: Any, extra: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(data, separators=(",", ":")).encode()
        handler.reply(code, body, "application/json", {**SECURITY_HEADERS, **(extra or {})})

    def _refuse(self, handler: Handler, refused: Refused) -> None:
        extra = {"WWW-Authenticate": 'Bearer realm="drainpool"'} if refused.code == 401 else None
        self._json(handler, refused.code, {"error": refused.reason}, extra)

    def _guarded(self, read: Callable[[Handler], Any]) -> Callable[[Handler], None]:
        """A GET route (the router has checked who may read): answer with `read`'s JSON."""

        def route(handler: Handler) -> None:
            try:
                self._json(handler, 200, read(handler))
            except Refused as refused:
                self._refuse(handler, refused)
            except Exception:
                log.exception("console: %s failed", handler.path)
                self._refuse(handler, Refused(500, "internal error (see the daemon's log)"))

        return route

    def _action(
        self, name: str, act: Callable[[dict[str, Any], Handler], dict[str, Any]]
    ) -> Callable[[Handler], None]:
        """A POST route: read the body, check every guard, act, and log it either way."""

        def route(handler: Handler) -> None:
            try:
                raw = handler.read_body()
            except BodyTooLarge:
                log.warning("console %s refused for %s: body too large", name, _who(handler))
                return
            try:
                self._check_action(handler)
                body = _parse_body(raw)
                result = act(body, handler)
            except Refused as refused:
                log.warning(
                    "console %s refused for %s: %s (%d)",
                    name,
                    _who(handler),
                    refused.reason,
                    refused.code,
                )
                self._refuse(handler, refused)
                return
            except Exception:
                log.exception("console %s by %s failed", name, _who(handler))
                self._refuse(handler, Refused(500, "internal error (see the daemon's log)"))
                return
            log.info(
                "console %s by %s: asked %s, %s",
                name,
                _who(handler),
                json.dumps(body)[:500],
                json.dumps(result),
            )
            self._json(handler, 202 if name == "reload" else 200, result)

        return route

    # -- guards ---------------------------------------------------------------

    def read_guard(self, handler: Handler) -> bool:
        """The router's guard for every non-public /api/ GET: True, or refused and answered."""
        try:
            self._check_read(handler)
        except Refused as refused:
            self._refuse(handler, refused)
            return False
        return True

    def _check_read(self, handler: Handler) -> None:
        settings = self.source.settings()
        if _bound_to_loopback(handler):
            _check_loopback_host(handler)
            return
        if settings.token is None:
            raise Refused(
                403,
                "the endpoint is not bound to loopback: reading the console needs console.token",
            )
        self._check_token(handler, settings)

    def _check_action(self, handler: Handler) -> None:
        settings = self.source.settings()
        if not settings.actions:
            raise Refused(403, "console actions are off (console.actions = false)")
        self._check_token(handler, settings)
        if _bound_to_loopback(handler):
            _check_loopback_host(handler)  # defence in depth: the token already guards it
        if handler.headers.get(CSRF_HEADER) != "1":
            raise Refused(403, f"missing header {CSRF_HEADER}: 1")
        _check_same_origin(handler)
        kind = handler.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            raise Refused(415, "the body must be application/json")

    @staticmethod
    def _check_token(handler: Handler, settings: ConsoleSettings) -> None:
        header = handler.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise Refused(401, "a bearer token is required (Authorization: Bearer ...)")
        expected = settings.token.get_secret_value() if settings.token else ""
        # compare_digest takes the same time wherever the first difference is.
        if not expected or not hmac.compare_digest(given.strip().encode(), expected.encode()):
            raise Refused(401, "wrong token")

    # -- reads ----------------------------------------------------------------

    def _console_info(self, handler: Handler) -> dict[str, Any]:
        settings = self.source.settings()
        loopback = _bound_to_loopback(handler)
        return {
            "version": __version__,
            "actions": settings.actions,
            "reading_needs_token": not loopback,
            "token_configured": settings.token is not None,
        }

    def _running(self, handler: Handler) -> dict[str, Any]:
        running = [
            {"pool": pool["name"], "generation": pool["generation"], **task}
            for pool in self.source.status()["pools"]
            for task in pool["running"]
        ]
        running.sort(key=lambda task: -task["seconds"])
        return {"running": running}

    def _queue(self, handler: Handler) -> dict[str, Any]:
        return self._read(lambda queue: queue.stats().as_dict())

    def _dead(self, handler: Handler) -> dict[str, Any]:
        limit = _limit(handler, 100)
        dead = self._read(lambda queue: queue.dead_list(limit))
        return {"dead": [dataclasses.asdict(job) for job in dead], "limit": limit}

    def _outcomes(self, handler: Handler) -> dict[str, Any]:
        limit = _limit(handler, 100)
        return {"outcomes": self.source.outcomes()[::-1][:limit]}

    def _outcome_minutes(self, handler: Handler) -> dict[str, Any]:
        minutes = self._read(lambda queue: queue.outcome_minutes(time.time() - CHART_SECONDS))
        return {"minutes": minutes, "outcomes": list(OUTCOMES)}

    def _jobs(self, handler: Handler) -> dict[str, Any]:
        query = parse_qs(urlsplit(handler.path).query)
        state = query.get("state", [""])[-1]
        if state and state not in {s.value for s in JobState}:
            names = ", ".join(JobState)
            raise Refused(400, f"state must be one of {names}, not {state!r}")
        limit = _limit(handler, 100)
        task = query.get("task", [""])[-1] or None
        records = self._read(lambda queue: queue.jobs(state or None, task, limit))
        return {"jobs": [info.as_dict() for info in records], "limit": limit}

    def _job(self, handler: Handler) -> dict[str, Any]:
        job_id = unquote(urlsplit(handler.path).path.rsplit("/", 1)[1])
        info = self._read(lambda queue: queue.job(job_id)) if job_id else None
        if info is None:
            raise Refused(
                404, str(JobNotFound(job_id)) if job_id else "give a job id: /api/jobs/ID"
            )
        return info.as_dict()

    def _read(self, read: Callable[[Queue], Any]) -> Any:
        queue = self._open_queue()
        try:
            return read(queue)
        except QueueError as exc:
            if isinstance(exc, QueueUnavailable):
                raise Refused(503, f"queue unavailable: {exc}") from None
            raise Refused(400, str(exc)) from None

    def _open_queue(self) -> Queue:
        queue = self.source.queue()
        if queue is None:
            raise Refused(503, "the queue is not open yet")
        return queue

    # -- actions --------------------------------------------------------------

    def _dead_retry(self, body: dict[str, Any], _handler: Handler) -> dict[str, Any]:
        return self._on_dead(body, "retry")

    def _dead_purge(self, body: dict[str, Any], _handler: Handler) -> dict[str, Any]:
        return self._on_dead(body, "purge")

    def _on_dead(self, body: dict[str, Any], action: str) -> dict[str, Any]:
        from drainpool import deadletters  # an action's module, not start-up's

        ids = _selected_ids(body)
        done = self._read(lambda queue: deadletters.apply(queue, action, ids))
        # The ids that were not dead jobs are named only when there are some: the answer
        # to a retry or purge of dead ids stays {"retried": n} as before.
        return {done.verb: done.count, **({"not_dead": done.not_dead} if done.not_dead else {})}

    def _cancel(self, body: dict[str, Any], handler: Handler) -> dict[str, Any]:
        """Cancel one job; 404 unknown, 409 already ended (nothing changed), else what it did."""
        job_id = unquote(urlsplit(handler.path).path.split("/")[-2])
        reason = body.get("reason", "")
        if not isinstance(reason, str) or len(reason) > MAX_REASON:
            raise Refused(400, f"reason must be text of at most {MAX_REASON} characters")
        asker = f"console {handler.client_address[0]}"
        result = self._read(lambda queue: _cancel_or_none(queue, job_id, reason, asker))
        if result is None:
            raise Refused(404, str(JobNotFound(job_id)))
        if result.effect is CancelEffect.ENDED:
            ended = f"job {job_id} had already ended ({result.job.state}); nothing changed"
            raise Refused(409, ended)
        return {"effect": str(result.effect), "job": result.job.as_dict()}

    def _reload(self, body: dict[str, Any], _handler: Handler) -> dict[str, Any]:
        seq = self.source.status()["reload"]["seq"]
        self.source.request_reload()
        # The caller waits for /api/status reload.seq to pass `seq`, as `drainpool reload` does.
        return {"requested": True, "seq": seq}


def _cancel_or_none(queue: Queue, job_id: str, reason: str, by: str) -> CancelResult | None:
    try:
        return queue.cancel(job_id, reason=reason, by=by)
    except JobNotFound:
        return None


def _who(handler: Handler) -> str:
    """The caller as logged: address, port and user agent (repr keeps it on one line)."""
    host, port = handler.client_address[:2]
    agent = handler.headers.get("User-Agent", "")[:120]
    return f"{host}:{port} agent={agent!r}"


def _bound_to_loopback(handler: Handler) -> bool:
    host = str(handler.server.server_address[0])
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _check_loopback_host(handler: Handler) -> None:
    """Refuse a loopback-bound request whose Host names another machine (DNS rebinding)."""
    if not _loopback_host(handler.headers.get("Host", "")):
        raise Refused(403, "the Host header must name a loopback address")


def _loopback_host(host_header: str) -> bool:
    """True for `localhost`, 127.x.y.z or [::1], with or without a port."""
    host = urlsplit(f"//{host_header}").hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_same_origin(handler: Handler) -> None:
    """Refuse a browser request from another origin (Origin, Sec-Fetch-Site)."""
    site = handler.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise Refused(403, f"cross-site request (Sec-Fetch-Site: {site})")
    origin = handler.headers.get("Origin")
    if origin is None:
        return  # not a browser (curl, scripts): the token and the custom header suffice
    scheme = "https" if isinstance(handler.connection, ssl.SSLSocket) else "http"
    host = handler.headers.get("Host", "")
    if not host or origin.lower() != f"{scheme}://{host}".lower():
        raise Refused(403, "cross-origin request (Origin does not match Host)")


def _parse_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise Refused(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    return body


def _selected_ids(body: dict[str, Any]) -> list[str] | None:
    """`{"ids": [...]}` or `{"all": true}`; None means every dead job."""
    unknown = set(body) - {"ids", "all"}
    if unknown:
        raise Refused(400, f"unknown fields: {', '.join(sorted(unknown))}")
    if body.get("all") is True and "ids" not in body:
        return None
    ids = body.get("ids")
    if "all" in body or not isinstance(ids, list) or not ids:
        raise Refused(400, 'send {"ids": ["..."]} (a non-empty list) or {"all": true}')
    if len(ids) > MAX_IDS:
        raise Refused(400, f"at most {MAX_IDS} ids at once")
    from drainpool import deadletters  # an action's module, not start-up's

    try:
        return deadletters.job_ids(ids)
    except QueueError as exc:
        raise Refused(400, str(exc)) from None


def _limit(handler: Handler, default: int) -> int:
    query = parse_qs(urlsplit(handler.path).query)
    raw = query.get("limit", [str(default)])[-1]
    try:
        limit = int(raw)
    except ValueError:
        raise Refused(400, "limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise Refused(400, f"limit must be between 1 and {MAX_LIMIT}")
    return limit
