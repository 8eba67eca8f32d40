"""Adding routes to the app: every handler wrapped in the request pipeline, unknown ones answered.

The app has no aiohttp middleware (see tokensvc.web.pipeline), so two things a middleware would
cover are done here instead: each route's handler is wrapped when it is added (`add_routes`,
also for routes added after `create_app`), and a last, catch-all route answers what no other
route matches — 404, or 405 with `Allow` when the path exists for other methods — as JSON through
the same pipeline, so those answers carry the headers, the log line and the metrics too.

A route added for every method (`*`: forward-auth, whose nginx subrequests keep the client's
method) still never serves TRACE: it answers it 405 like any other route does. (TRACK and
CONNECT never get this far: aiohttp's parser refuses the one, its router the other.)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from tokensvc.web.pipeline import Wrap

PIPELINE: web.AppKey[Wrap] = web.AppKey("pipeline")

# aiohttp looks a path up under its longest registered prefix first, and this one is "/": every
# other route, whenever it was added, is tried before it (unless it is also a pattern straight
# under "/", which this app has none of).
# `(?s:…)`: a decoded line break (/zz%0a) is a path like any other (red team: `.*` stopped there,
# and aiohttp's own plain-text 404 answered, without our headers, log line or metrics).
_CATCH_ALL = "/{unmatched_path:(?s:.*)}"
UNMATCHED = "unmatched"  # the route name logs and metrics give an unmatched request

# Methods no route serves: TRACE asks for the request to be echoed back, Authorization header
# included (cross-site tracing). nginx refuses it itself, so an any-method route loses nothing.
NEVER_SERVED: Final = frozenset((hdrs.METH_TRACE,))
# What an any-method route names in the Allow header of that 405: the methods of RFC 9110 it
# serves (others, such as WebDAV's, are served but not advertised).
ANY_METHOD_ALLOW: Final = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")

# A variable's regex (`{id:[0-9a-f]{32}}`, one level of braces inside, as aiohttp allows).
_VARIABLE_REGEX = re.compile(r"\{(\w+):(?:[^{}]|\{[^{}]*\})*\}")


def template(path: str) -> str:
    """`path` as openapi.yaml, the logs and the metrics name it: variables without their regex."""
    return _VARIABLE_REGEX.sub(r"{\1}", path)


def add_routes(app: web.Application, routes: Iterable[web.RouteDef]) -> None:
    """Add `routes`, each handler wrapped in the app's pipeline and named by its path template."""
    wrap = app[PIPELINE]
    for route in routes:
        handler = route.handler
        if route.method == hdrs.METH_ANY:
            handler = _refusing_never_served(handler)
        web.RouteDef(
            route.method, route.path, wrap(handler, template(route.path)), route.kwargs
        ).register(app.router)


def _refusing_never_served(handler: Handler) -> Handler:
    async def refusing(request: web.Request) -> web.StreamResponse:
        if request.method in NEVER_SERVED:
            raise web.HTTPMethodNotAllowed(request.method, ANY_METHOD_ALLOW)
        return await handler(request)

    return refusing


def add_catch_all(app: web.Application) -> None:
    """The route that answers 404/405 for every request no other route takes."""
    app.router.add_route("*", _CATCH_ALL, app[PIPELINE](_unmatched, UNMATCHED))


async def _unmatched(request: web.Request) -> web.StreamResponse:
    allowed: set[str] = set()
    this = request.match_info.route.resource  # the catch-all itself, which matches everything
    for resource in request.app.router.resources():
        if resource is not this:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()
