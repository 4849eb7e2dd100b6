"""Keep credentials out of what Tessera writes down: job records, journals, dead letters.

One rule for every file: a mapping entry whose name looks secret (``token``, ``secret``,
``password``, ``auth``, ``credential``, ``api_key``, ``signature``...) is replaced by
`REDACTED`; a URL loses its user info and its secret-looking query parameters.

Example:
    >>> redact_secrets({"api_token": "t0k", "project": 3})
    {'api_token': 'REDACTED', 'project': 3}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = ["REDACTED", "SECRET_NAME", "looks_secret", "redact_secrets", "redact_url"]

#: What a redacted value becomes.
REDACTED = "REDACTED"
#: Names of options and query parameters whose values are secret.
SECRET_NAME = re.compile(
    r"token|secret|passw|signature|^sig$|^key$|api[_-]?key|access[_-]?key|private[_-]?key|auth|"
    r"credential|cookie",
    re.IGNORECASE,
)


def looks_secret(name: str) -> bool:
    """True when an option or parameter named ``name`` holds a secret.

    Example:
        >>> looks_secret("ACME_API_TOKEN"), looks_secret("project_id")
        (True, False)
    """
    return bool(SECRET_NAME.search(str(name)))


def redact_secrets(value: Any, urls: bool = True) -> Any:
    """A copy of ``value`` (nested dicts/lists) with secret-looking entries redacted.

    Args:
        value: The value to copy.
        urls: Also redact strings that are URLs (`redact_url`).
    """
    if isinstance(value, Mapping):
        return {
            k: REDACTED if looks_secret(k) else redact_secrets(v, urls) for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact_secrets(v, urls) for v in value]
    if urls and isinstance(value, str) and "://" in value:
        return redact_url(value)
    return value


def redact_url(url: str | None) -> str | None:
    """Drop a URL's ``user:password@`` and redact query parameters with secret names.

    Example:
        >>> redact_url("https://u:p@host/a.jpg?X-Amz-Signature=abc&w=2")
        'https://host/a.jpg?X-Amz-Signature=REDACTED&w=2'
    """
    if not url or "://" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, REDACTED if looks_secret(k) else v) for k, v in pairs], safe="/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
