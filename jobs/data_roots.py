"""Where a node may read ``jobs.data.Files`` partitions: its operator's data roots.

A ``Files`` dataset names paths and URLs that the *nodes* open, so whoever
submits one chooses what a node reads. A node therefore reads only under the
roots its operator configured (``grid node --data-root``,
``grid.node.data-roots``) and never fetches URLs that point back into its own
networks (loopback, link-local, private ranges) unless the operator allows it
(``grid.node.allow-private-urls``). The node side of the grid looks the
settings up and calls :func:`check_location` right before it opens the file;
this module is pure (stdlib only) and takes everything as arguments.

How a location matches a root:

* Local paths (and ``file://`` URLs) are resolved with :func:`os.path.realpath`
  (symlinks and ``..``) against the node's working directory, and so are the
  roots; a path matches a root when the resolved path is the root or lies
  below it (whole path components: ``/data`` does not cover ``/database``).
  The node then opens the resolved path, not the name it was given.
* URLs match a URL root with the same scheme, host and port (the scheme's
  default port when none is written) whose path is a prefix of the URL's path
  on whole segments. URL paths with ``.`` or ``..`` segments (also
  percent-encoded) are refused, since servers resolve them.
* Chained fsspec URLs (``a::b``) are refused: the inner location would escape
  every check.

Refusals never depend on whether the file exists and never name what a
symlink points to, so they reveal nothing about the node's file system.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from jobs.data import DataError

#: ``scheme://`` at the start of a location, as fsspec and pandas recognise URLs
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_CHAIN = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*::")
#: schemes whose "host" is a bucket or container name, not a network address
BUCKET_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})
#: schemes fetched by :func:`fetch_url` (pinned to the checked address, no redirects)
HTTP_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "sftp": 22, "ssh": 22}
#: seconds a node waits on an HTTP server before giving up on a partition
HTTP_TIMEOUT = 60.0

Resolver = Callable[[str, int | None], Sequence[str]]


class DataAccessError(DataError):
    """A node refused to open a partition's location; the message says why and how to allow it."""


@dataclass(frozen=True)
class Location:
    """A checked place to read a partition from.

    Attributes
    ----------
    given : str
        The path or URL as the dataset named it (for messages).
    target : str
        What the node opens: the resolved path for local files, the URL otherwise.
    local : bool
        Whether ``target`` is a path on the node.
    addresses : tuple of str
        For URLs with a network host: every address the host resolved to (all
        checked); :func:`fetch_url` connects to these, never resolving again.
    """

    given: str
    target: str
    local: bool
    addresses: tuple[str, ...] = ()


def is_chained(location: str) -> bool:
    """Whether ``location`` looks like a chained fsspec URL (``simplecache::https://...``).

    http(s) URLs are fetched without fsspec, so ``::`` there is an IPv6 host or part of the path.
    """
    if "::" not in location or (is_url(location) and urlsplit(location).scheme.lower() in HTTP_SCHEMES):
        return False
    return "://" in location or bool(_CHAIN.match(location))


def is_url(location: str) -> bool:
    """Whether ``location`` is a URL (``scheme://...``) rather than a path on the node."""
    return bool(_URL.match(location))


def _local_path(location: str) -> str | None:
    """The node path a location names (``file://`` URLs included), or None for remote URLs."""
    if not is_url(location):
        return location
    parts = urlsplit(location)
    if parts.scheme.lower() in ("file", "local"):
        if parts.netloc not in ("", "localhost"):
            raise DataAccessError(f"{location}: file URLs on another host ({parts.netloc!r}) are not read by nodes")
        return unquote(parts.path)
    return None


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _under(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives (Windows)
        return False


def _url_key(location: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path) of a URL, lower-cased where the URL is case-insensitive.

    For bucket schemes the user part belongs to the host (``abfs://container@account/``).
    """
    parts = urlsplit(location)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise DataAccessError(f"{location}: the URL has an invalid port") from None
    if not parts.hostname:
        raise DataAccessError(f"{location}: the URL names no host")
    host = parts.hostname.lower()
    if scheme in BUCKET_SCHEMES and parts.username:
        host = f"{parts.username}@{host}"
    return scheme, host, port or _DEFAULT_PORTS.get(scheme), parts.path or "/"


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


def roots_setting(value: Any) -> list[str]:
    """The ``grid.node.data-roots`` setting as a list (one root may be given as a bare string,
    as ``DASK_GRID__NODE__DATA_ROOTS=/srv/data`` gives it)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return list(value)


def normalize_roots(roots: Iterable[str]) -> list[str]:
    """Roots as the node matches them: local roots resolved, URL roots checked.

    Raises
    ------
    ValueError
        For an empty root, a chained URL or a URL root without a host.
    """
    out: list[str] = []
    for root in roots:
        if not isinstance(root, str) or not root.strip():
            raise ValueError(f"data root {root!r} is empty; name a directory or a URL prefix")
        root = root.strip()
        if is_chained(root):
            raise ValueError(f"data root {root!r} is a chained URL; name a plain directory or URL prefix")
        local = _local_path(root)
        if local is not None:
            out.append(_real(local))
        else:
            try:
                _url_key(root)
            except DataAccessError as exc:
                raise ValueError(f"data root {exc}") from None
            out.append(root)
    return out


def _root_matches(location: str, root: str) -> bool:
    if _local_path(root) is not None:
        return False  # root is local, location is a URL
    scheme, host, port, path = _url_key(location)
    r_scheme, r_host, r_port, r_path = _url_key(root)
    if (scheme, host, port) != (r_scheme, r_host, r_port):
        return False
    prefix = _segments(r_path)
    return _segments(path)[: len(prefix)] == prefix


def is_public_address(address: str) -> bool:
    """Whether an IP address is a public one (not loopback, link-local, private, unspecified, ...).

    IPv4 addresses embedded in IPv6 ones (``::ffff:127.0.0.1``, 6to4) are
    judged by the IPv4 address they reach.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone index
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None and not is_public_address(str(embedded)):
            return False
        if ip.teredo is not None and not all(is_public_address(str(a)) for a in ip.teredo):
            return False
    return not (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
        or ip.is_reserved
        or ip.is_multicast
        or not ip.is_global
    )


def resolve_host(host: str, port: int | None) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), as the node would connect to them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


def _resolve(location: str, resolve: Resolver) -> tuple[str, ...]:
    _, host, port, _ = _url_key(location)
    try:
        addresses = tuple(resolve(host.strip("[]"), port))
    except (OSError, UnicodeError):
        addresses = ()
    if not addresses:
        raise DataAccessError(f"{location}: the host {host!r} does not resolve on this node")
    return addresses


def _check_host(location: str, resolve: Resolver) -> tuple[str, ...]:
    """Every address of the URL's host, all of them public (else refused)."""
    addresses = _resolve(location, resolve)
    private = [a for a in addresses if not is_public_address(a)]
    if private:
        _, host, _, _ = _url_key(location)
        raise DataAccessError(
            f"{location}: refused: the host {host!r} resolves to a loopback, link-local or private address "
            f"({', '.join(private)}), and nodes do not fetch from their own networks. A node operator who "
            "means to serve data from such a host allows it with `grid node --allow-private-urls` "
            "(grid.node.allow-private-urls: true)"
        )
    return addresses


def _outside(location: str, roots: Sequence[str], restricted_by: str) -> DataAccessError:
    if not roots:
        return DataAccessError(
            f"{location}: refused: this node reads files only under data roots its operator names, and it has "
            f"none ({restricted_by}). Ask the node's operator to start it with `grid node --data-root "
            "DIR_OR_URL_PREFIX` (or set grid.node.data-roots), and put the dataset there"
        )
    return DataAccessError(
        f"{location}: refused: the {'URL' if is_url(location) else 'path'} is outside this node's data roots "
        f"{list(roots)}. Put the dataset under "
        "one of them, or ask the node's operator to add a root (`grid node --data-root DIR_OR_URL_PREFIX`, "
        "grid.node.data-roots)"
    )


def check_location(
    location: str,
    roots: Sequence[str],
    *,
    restricted: bool,
    allow_private_urls: bool = False,
    resolve: Resolver | None = None,
    restricted_by: str = "a community node",
) -> Location:
    """Decide whether a node may read ``location``; return where to read it.

    Parameters
    ----------
    location : str
        A path or URL from a ``Files`` dataset.
    roots : sequence of str
        The node's data roots (directories or URL prefixes), as configured.
    restricted : bool
        Whether the node reads only under ``roots``. When False (a private or
        embedded node without roots) every path is allowed; URLs are still
        checked for private addresses.
    allow_private_urls : bool, default=False
        Whether URLs whose host resolves to a loopback, link-local, private or
        unspecified address may be read.
    resolve : callable, optional
        ``resolve(host, port) -> addresses``; default :func:`resolve_host`.
    restricted_by : str
        Why the node is restricted though it has no roots, for the message.

    Returns
    -------
    Location

    Raises
    ------
    DataAccessError
        Naming the location, the reason and how the operator allows it.
    """
    resolve = resolve or resolve_host
    if not isinstance(location, str) or not location:
        raise DataAccessError(f"{location!r}: a partition location must be a non-empty path or URL")
    if "\x00" in location:
        raise DataAccessError(f"{location!r}: the path contains a NUL character")
    if is_chained(location):
        raise DataAccessError(f"{location}: chained fsspec URLs (a::b) are not read by nodes; name the file itself")
    try:
        roots = normalize_roots(roots) if restricted else []
    except ValueError as exc:
        raise DataAccessError(f"{location}: this node's data roots are misconfigured ({exc}); ask its operator to fix them") from None
    local = _local_path(location)
    if local is not None:
        real = _real(local)
        if restricted and not any(_under(real, r) for r in roots if _local_path(r) is not None):
            raise _outside(location, roots, restricted_by)
        return Location(given=location, target=real, local=True)
    scheme, _, _, path = _url_key(location)
    if any(s in (".", "..") for s in unquote(path).replace("\\", "/").split("/")):
        raise DataAccessError(f"{location}: URL paths with '.' or '..' segments are not read by nodes")
    if restricted and not any(_root_matches(location, r) for r in roots):
        raise _outside(location, roots, restricted_by)
    addresses: tuple[str, ...] = ()
    if scheme in BUCKET_SCHEMES:
        pass  # the "host" is a bucket; the storage service's endpoint is the node operator's setting
    elif not allow_private_urls:
        addresses = _check_host(location, resolve)
    elif scheme in HTTP_SCHEMES:
        addresses = _resolve(location, resolve)  # fetch_url connects to these
    return Location(given=location, target=location, local=False, addresses=addresses)


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to an address checked beforehand: the host is never resolved
    again, so a DNS answer that changes between the check and the fetch cannot redirect it."""

    def __init__(self, host: str, port: int, address: str, tls: bool, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address
        self._tls = ssl.create_default_context() if tls else None

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_hostname=self.host)  # verifies the host's certificate
        self.sock = sock


def fetch_url(location: Location, *, timeout: float = HTTP_TIMEOUT) -> io.BytesIO:
    """GET an http(s) :class:`Location` from its checked addresses; redirects are not followed.

    Raises
    ------
    DataAccessError
        For a redirect (its target was never checked).
    DataError
        When the server answers with another error status.
    OSError
        When no address answers.
    """
    scheme, host, port, _ = _url_key(location.target)
    parts = urlsplit(location.target)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    last: OSError | None = None
    for address in location.addresses:
        conn = _PinnedConnection(host, int(port), address, tls=scheme == "https", timeout=timeout)
        try:
            conn.request("GET", target, headers={"Accept-Encoding": "identity"})
            response = conn.getresponse()
            if 300 <= response.status < 400:
                raise DataAccessError(
                    f"{location.given}: the server answered with a redirect (HTTP {response.status}); nodes do not "
                    "follow redirects, name the final URL in the dataset"
                )
            if response.status != 200:
                raise DataError(f"{location.given}: the server answered HTTP {response.status}")
            return io.BytesIO(response.read())
        except DataError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            last = exc if isinstance(exc, OSError) else OSError(type(exc).__name__)
        finally:
            conn.close()
    raise last or OSError(f"{host!r} has no address to connect to")
