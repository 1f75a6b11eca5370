"""Where a download may be redirected: http(s) only, no downgrade, no private networks.

Delivery hosts answer with redirects now and then (a CDN hands over to a storage
account). :func:`next_hop` decides each hop of the downloader's manual redirect loop:
the target must be ``http`` or ``https``, an ``https`` URL never leads to ``http``, and
a target that names a loopback, link-local, private or otherwise reserved address
(``127.0.0.1``, ``169.254.169.254``, ``10.x``, ``localhost``, ...) is refused unless the
original result URL itself named such an address (the loopback simulator). Host names
are judged as written; they are not resolved here (see docs/security.md).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urljoin, urlsplit

__all__ = ["RedirectRefused", "is_internal_host", "next_hop"]

_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class RedirectRefused(ValueError):
    """A redirect the downloader will not follow (internal; the caller wraps it)."""


def is_internal_host(host: str) -> bool:
    """Return whether ``host`` names a loopback, link-local, private or reserved address."""
    name = host.strip("[]").lower().rstrip(".")
    if name in _LOCAL_NAMES or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def next_hop(origin: str, current: str, location: str) -> str:
    """Return the absolute URL a redirect from ``current`` to ``location`` leads to.

    ``origin`` is the result URL the download started from. Raises
    :class:`RedirectRefused` when the hop breaks a rule above.
    """
    if not location:
        raise RedirectRefused("a redirect without a Location")
    try:
        target = urljoin(current, location.strip())
        parts = urlsplit(target)
        before = urlsplit(current)
        start = urlsplit(origin)
        host = parts.hostname or ""
    except ValueError as exc:
        raise RedirectRefused("a redirect to an unreadable URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        raise RedirectRefused(f"a redirect to a {scheme or 'relative'}: URL")
    if before.scheme.lower() == "https" and scheme == "http":
        raise RedirectRefused("a redirect from https down to http")
    if is_internal_host(host) and not is_internal_host(start.hostname or ""):
        raise RedirectRefused(f"a redirect to an internal address ({host})")
    return target
