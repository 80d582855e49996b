"""Rendering the console's pages: one Jinja2 environment over this package's templates, autoescaped
(every value a page shows — an entry's owner, an audit reason, a partner's error — may have been written
by someone else), with the helpers the templates use and the headers every page carries.

The headers keep a page to itself: the Content-Security-Policy allows only our own stylesheet and forms
that post back here (no script at all), framing is refused, and nothing is cached or sent as a referrer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
STYLESHEET = resources.files("ca.console").joinpath("static/console.css").read_bytes()


def when(at: datetime | None) -> str:
    """A moment as pages show it: ``2030-01-02 03:04:05 UTC``; ``-`` for none."""
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def relative(at: datetime | None, now: datetime) -> str:
    """How far ``at`` is from ``now``, roughly: ``in 2h 5m``, ``3d 4h ago``."""
    if at is None:
        return ""
    seconds = int((at - now).total_seconds())
    return f"in {_approximately(seconds)}" if seconds >= 0 else f"{_approximately(-seconds)} ago"


def _approximately(seconds: int) -> str:
    """The two largest units of a duration: ``3d 4h``, ``2h 5m``, ``42s``."""
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (size == 1 and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        elif parts:
            break
        if len(parts) == 2:
            break
    return " ".join(parts)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("ca.console", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["hex"] = lambda number: format(number, "x")
    env.globals["relative"] = relative
    return env


ENVIRONMENT = _environment()


def render(template: str, **context: Any) -> str:
    """The page ``template`` with ``context`` (every value escaped unless the template says otherwise)."""
    return ENVIRONMENT.get_template(template).render(**context)


def refusal_page(status: int, reason: str) -> bytes:
    """The page a console request refused by the admin guard gets: the reason and the way back in."""
    return render("refused.html", status=status, reason=reason, nav=None).encode()
