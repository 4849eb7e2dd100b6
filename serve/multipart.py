"""A small ``multipart/form-data`` parser over a body already read (and size-checked).

The server reads each request body itself, under its size limit, so it parses form data
from bytes instead of through a streaming parser library.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message


class MultipartError(ValueError):
    """The body is not well-formed ``multipart/form-data``."""


@dataclass(frozen=True)
class FormPart:
    """One part of a form: a field, or a file when ``filename`` is set.

    Attributes:
        name: The form field's name.
        filename: The uploaded file's name, or None for a plain field.
        content_type: The part's ``Content-Type`` ("text/plain" when not given).
        data: The part's bytes.
    """

    name: str
    filename: str | None
    content_type: str
    data: bytes

    @property
    def text(self) -> str:
        """The part's bytes as UTF-8 text (for plain fields).

        Raises:
            MultipartError: The bytes are not UTF-8.
        """
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MultipartError(f"form field {self.name!r} is not UTF-8 text") from exc


def header_params(value: str, header: str = "content-type") -> Message:
    """Parse a MIME header value, so ``.get_param(name)`` reads its parameters.

    Example:
        >>> header_params('multipart/form-data; boundary="ab c"').get_param("boundary")
        'ab c'
    """
    message = Message()
    message[header] = value
    return message


def parse_multipart(body: bytes, content_type: str) -> list[FormPart]:
    r"""Split a ``multipart/form-data`` body into its parts.

    Args:
        body: The whole request body.
        content_type: The request's ``Content-Type`` header, with its boundary.

    Returns:
        The parts, in order.

    Raises:
        MultipartError: No boundary, a missing delimiter or header block, or a part
            without a field name.

    Example:
        >>> body = (b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"'
        ...         b'\r\nContent-Type: image/png\r\n\r\nPNG...\r\n--x--\r\n')
        >>> part = parse_multipart(body, "multipart/form-data; boundary=x")[0]
        >>> part.name, part.filename, part.data
        ('file', 'a.png', b'PNG...')
    """
    boundary = header_params(content_type).get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise MultipartError("multipart/form-data without a boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise MultipartError("multipart body has no part (boundary not found)")
    parts: list[FormPart] = []
    position = start + len(delimiter)
    while True:
        if body[position : position + 2] == b"--":
            return parts
        if body[position : position + 2] != b"\r\n":
            raise MultipartError("malformed multipart body (no line break after a boundary)")
        position += 2
        header_end = body.find(b"\r\n\r\n", position)
        if header_end < 0:
            raise MultipartError("malformed multipart body (a part has no header block)")
        headers = _headers(body[position:header_end])
        data_start = header_end + 4
        data_end = body.find(b"\r\n" + delimiter, data_start)
        if data_end < 0:
            raise MultipartError("malformed multipart body (the closing boundary is missing)")
        parts.append(_part(headers, body[data_start:data_end]))
        position = data_end + 2 + len(delimiter)


def _headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\r\n"):
        key, sep, value = line.partition(":")
        if not sep:
            raise MultipartError(f"malformed multipart header line {line[:80]!r}")
        headers[key.strip().lower()] = value.strip()
    return headers


def _part(headers: dict[str, str], data: bytes) -> FormPart:
    disposition = headers.get("content-disposition")
    if not disposition:
        raise MultipartError("a multipart part has no Content-Disposition header")
    params = header_params(disposition, "content-disposition")
    name = params.get_param("name", header="content-disposition")
    if not isinstance(name, str) or not name:
        raise MultipartError("a multipart part has no field name")
    filename = params.get_filename()
    content_type = headers.get("content-type", "text/plain").split(";")[0].strip().lower()
    return FormPart(name, filename, content_type, data)
