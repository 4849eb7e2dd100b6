"""Guards of the prediction server: bearer tokens, and URLs that are safe to fetch.

Everything here is plain Python (no Serve), so it is tested on its own.

A URL given by a client is fetched only when it is http or https and every address its
host resolves to is public: loopback, private, link-local, multicast, reserved and
unspecified addresses are refused (server-side request forgery), unless the server allows
private URLs, or allows the network the address lies in. The fetch connects to the very
address that was checked (so a DNS answer that changes between the check and the
connection cannot slip through), sends the original host name for virtual hosting and TLS,
and follows redirects one hop at a time, checking each hop the same way.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3

#: Redirects followed before a URL is given up.
MAX_REDIRECTS = 5

_REDIRECT_CODES = (301, 302, 303, 307, 308)
_CHUNK_BYTES = 1024 * 1024

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


class UnsafeURLError(ValueError):
    """A URL the server refuses to fetch: its scheme, or the address its host resolves to."""


class URLFetchError(ValueError):
    """A URL that could not be fetched: unknown host, HTTP error, timeout, too large."""


def check_token(authorization: str | None, token: str | None) -> bool:
    """Tell whether an ``Authorization`` header carries the server's bearer token.

    Args:
        authorization: The request's ``Authorization`` header, or None.
        token: The server's token; None means the server needs no token.

    Returns:
        True when no token is needed, or the header is ``Bearer <token>`` (compared in
        constant time).

    Example:
        >>> check_token("Bearer s3cret", "s3cret"), check_token("Bearer nope", "s3cret")
        (True, False)
        >>> check_token(None, None)
        True
    """
    if token is None:
        return True
    if not authorization:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


@dataclass(frozen=True)
class URLPolicy:
    """Which addresses URLs may point to.

    Attributes:
        allow_private: Allow every address (loopback and private networks included).
        allowed_networks: Networks allowed even though they are not public, e.g.
            ``("10.1.0.0/16",)`` for an internal image store.

    Example:
        >>> policy = URLPolicy.from_option(["10.0.0.0/8"])
        >>> policy.refusal("10.2.3.4") is None, policy.refusal("127.0.0.1")
        (True, 'a loopback address')
    """

    allow_private: bool = False
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def from_option(cls, option: bool | str | Iterable[str] | None) -> URLPolicy:
        """Build the policy from the server option ``allow_private_urls``.

        Args:
            option: True/False, or networks (CIDR strings or addresses) to allow.

        Raises:
            ValueError: A network that does not parse.
        """
        if option is None or isinstance(option, bool):
            return cls(allow_private=bool(option))
        networks = [option] if isinstance(option, str) else list(option)
        try:
            parsed = tuple(ipaddress.ip_network(str(n), strict=False) for n in networks)
        except ValueError as exc:
            raise ValueError(f"allow_private_urls: {exc}") from exc
        return cls(allow_private=False, allowed_networks=parsed)

    def refusal(self, address: str) -> str | None:
        """Return why ``address`` is refused (e.g. "a loopback address"), or None."""
        if self.allow_private:
            return None
        ip = ipaddress.ip_address(address.split("%")[0])
        if any(ip in network for network in self.allowed_networks):
            return None
        kind = address_kind(ip)
        return None if kind is None else f"a {kind} address"


def address_kind(ip: IPAddress) -> str | None:
    """Name the kind of a non-public address ("loopback", "private", ...); None if public.

    IPv4 addresses mapped into IPv6 (``::ffff:127.0.0.1``) are judged as IPv4.

    Example:
        >>> import ipaddress
        >>> [address_kind(ipaddress.ip_address(a)) for a in ("8.8.8.8", "169.254.1.1")]
        [None, 'link-local']
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind in ("loopback", "link_local", "unspecified", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    return None if ip.is_global else "non-public"


def resolve_host(host: str, port: int) -> list[str]:
    """Return every address ``host`` resolves to (IPv4 and IPv6), in resolver order.

    Raises:
        URLFetchError: The host does not resolve.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise URLFetchError(f"cannot resolve host {host!r}: {exc}") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed the checks, with the address to connect to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str
    target: str  # path and query, as sent in the request line


def check_url(
    url: str, policy: URLPolicy | None = None, resolve: Resolver = resolve_host
) -> CheckedURL:
    """Check that a client's URL may be fetched, and pick the address to connect to.

    Args:
        url: The URL.
        policy: Which addresses are allowed (default: public addresses only).
        resolve: Host name -> addresses (`resolve_host`; tests pass their own).

    Returns:
        The URL's parts and the checked address.

    Raises:
        UnsafeURLError: Not http/https, no host, or an address the policy refuses (every
            address the host resolves to must be allowed).
        URLFetchError: The host does not resolve.

    Example:
        >>> check_url("https://example.com/a.png?x=1").target  # doctest: +SKIP
        '/a.png?x=1'
        >>> check_url("http://127.0.0.1:8000/a.png")
        Traceback (most recent call last):
        ...
        serve.security.UnsafeURLError: http://127.0.0.1:8000/a.png: host 127.0.0.1 is ...
    """
    policy = policy or URLPolicy()
    if not isinstance(url, str):
        raise UnsafeURLError(f"a URL must be a string, got {type(url).__name__}")
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UnsafeURLError(f"{url}: only http and https URLs are accepted")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise UnsafeURLError(f"{url}: invalid URL: {exc}") from exc
    if not host:
        raise UnsafeURLError(f"{url}: invalid URL, no host")
    port = port or (443 if scheme == "https" else 80)
    addresses = resolve(host, port)
    if not addresses:
        raise URLFetchError(f"{url}: host {host!r} has no address")
    for address in addresses:
        why = policy.refusal(address)
        if why is not None:
            shown = host if host == address else f"{host} ({address})"
            raise UnsafeURLError(
                f"{url}: host {shown} is {why}; loopback, private and link-local "
                "addresses are refused"
            )
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return CheckedURL(url.strip(), scheme, host, port, addresses[0], target)


def fetch_url_safely(
    url: str,
    timeout: float = 30.0,
    max_bytes: int = 50 * 2**20,
    policy: URLPolicy | None = None,
    max_redirects: int = MAX_REDIRECTS,
    resolve: Resolver = resolve_host,
) -> bytes:
    """Download a client's URL, checking it and every redirect hop with `check_url`.

    Args:
        url: An http or https URL.
        timeout: Seconds for connecting, for each read, and for the whole download.
        max_bytes: Refuse bodies larger than this.
        policy: Which addresses are allowed (default: public addresses only).
        max_redirects: Redirects followed before giving up.
        resolve: Host name -> addresses.

    Returns:
        The response body.

    Raises:
        UnsafeURLError: The URL, or a redirect, points where the policy refuses.
        URLFetchError: Unknown host, connection failure, non-2xx status, timeout, too
            many redirects, or a body above ``max_bytes``.

    Example:
        >>> data = fetch_url_safely("https://example.com/cat.png", timeout=10)  # doctest: +SKIP
    """
    deadline = time.monotonic() + timeout
    current = url
    for _hop in range(max_redirects + 1):
        checked = check_url(current, policy, resolve)
        pool, response = _open(checked, timeout)
        try:
            if response.status in _REDIRECT_CODES and response.headers.get("Location"):
                current = urljoin(checked.url, response.headers["Location"])
                continue
            if not 200 <= response.status < 300:
                raise URLFetchError(f"{checked.url}: HTTP {response.status} {response.reason}")
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > max_bytes:
                raise URLFetchError(
                    f"{checked.url}: response of {length} bytes is above {max_bytes}"
                )
            return _read(response, checked.url, deadline, max_bytes, timeout)
        finally:
            response.release_conn()
            pool.close()
    raise URLFetchError(f"{url}: more than {max_redirects} redirects")


def _open(
    checked: CheckedURL, timeout: float
) -> tuple[urllib3.HTTPConnectionPool, urllib3.BaseHTTPResponse]:
    """Send the GET to the checked address, naming the original host (Host header, SNI)."""
    default_port = 443 if checked.scheme == "https" else 80
    host_header = f"[{checked.host}]" if ":" in checked.host else checked.host
    if checked.port != default_port:
        host_header += f":{checked.port}"
    options: dict = {"timeout": urllib3.Timeout(connect=timeout, read=timeout), "retries": False}
    if checked.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            checked.address,
            checked.port,
            server_hostname=checked.host,
            assert_hostname=checked.host,
            cert_reqs="CERT_REQUIRED",
            ca_certs=_ca_bundle(),
            **options,
        )
    else:
        pool = urllib3.HTTPConnectionPool(checked.address, checked.port, **options)
    try:
        response = pool.urlopen(
            "GET",
            checked.target,
            headers={"Host": host_header, "User-Agent": "tessera-serve", "Accept": "image/*"},
            redirect=False,
            preload_content=False,
            assert_same_host=False,
        )
    except urllib3.exceptions.HTTPError as exc:
        pool.close()
        reason = getattr(exc, "reason", None) or exc
        raise URLFetchError(f"{checked.url}: cannot fetch: {_short(reason)}") from exc
    return pool, response


def _read(
    response: urllib3.BaseHTTPResponse, url: str, deadline: float, max_bytes: int, timeout: float
) -> bytes:
    body = bytearray()
    try:
        while chunk := response.read1(_CHUNK_BYTES):
            body += chunk
            if len(body) > max_bytes:
                raise URLFetchError(f"{url}: response is above {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise URLFetchError(f"{url}: timed out after {float(timeout)} s")
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise URLFetchError(f"{url}: download failed: {_short(exc)}") from exc
    return bytes(body)


def _ca_bundle() -> str | None:
    try:
        import certifi

        return certifi.where()
    except ImportError:  # the system's default trust store
        return None


def _short(error: object) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def parse_networks(values: Sequence[str]) -> tuple[str, ...]:
    """Check CIDR networks (or single addresses) given on the command line; return them.

    Raises:
        ValueError: One does not parse.

    Example:
        >>> parse_networks(["10.0.0.0/8", "192.168.1.7"])
        ('10.0.0.0/8', '192.168.1.7')
    """
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise ValueError(f"not a network: {value!r} ({exc})") from exc
    return tuple(values)
