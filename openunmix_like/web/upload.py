"""``POST /api/jobs``'s multipart body read as it arrives, the file written straight into the jobs folder.

FastAPI's own form parsing spools an uploaded file into the system's temporary folder (often a
tmpfs, that is memory) before the route sees it, and the job then copies it: a 500 MB upload would
be held twice, once perhaps in memory, and outside the folder ``--jobs-dir`` names. Here the part
named ``file`` goes, in blocks of ``COPY_BLOCK``, to a file in a staging folder of the jobs folder,
from which the job takes it without copying. The other fields (the options) are short and kept in memory.
"""
from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import BinaryIO, Dict, List, Optional

try:
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header
except ImportError:  # python-multipart before 0.0.13 (the web extra asks for 0.0.9 or later)
    from multipart.exceptions import FormParserError
    from multipart.multipart import MultipartParser, parse_options_header

from .jobs import COPY_BLOCK

FILE_FIELD = "file"
FIELD_MAX = 4096  # bytes of one option field: names and numbers
FIELDS_MAX = 64
# A form's file name cannot hold a quote or a line break as such: browsers (and httpx) send them as
# %22, %0D and %0A (the HTML standard's form encoding), which would otherwise be shown and used as typed.
FORM_ESCAPES = {"%22": '"', "%0D": "\r", "%0A": "\n"}


class FormError(Exception):
    """The body is not a form this server can take; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Upload:
    """What :func:`read_upload` found: the file's name as sent, and the other fields (each value as sent)."""

    filename: str
    fields: Dict[str, List[str]]


class _Parts:
    """The parser's callbacks: the file part's bytes wait in ``pending`` until written, the fields are kept."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.fields: Dict[str, List[str]] = {}
        self.pending: List[bytes] = []
        self.pending_size = 0
        self.filename: Optional[str] = None  # set when the file part starts
        self.file_done = False
        self._in_file = False
        self._header = [b"", b""]
        self._disposition = b""
        self._data = bytearray()
        self._name = ""

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self._disposition, self._data, self._in_file = b"", bytearray(), False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        if self._header[0].strip().lower() == b"content-disposition":
            self._disposition = self._header[1]
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise FormError(400, "a form part has no name (Content-Disposition: form-data; name=...)")
        self._name = options[b"name"].decode("utf-8", "replace")
        if self._name != FILE_FIELD:
            if sum(map(len, self.fields.values())) >= FIELDS_MAX:
                raise FormError(400, f"more than {FIELDS_MAX} form fields; send the options the API lists")
            return
        if self.filename is not None:
            raise FormError(400, f"more than one '{FILE_FIELD}' field; send one file per request")
        self.filename = form_filename(options.get(b"filename", b""))
        self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._in_file:
            self.pending.append(data[start:end])
            self.pending_size += end - start
            return
        self._data += data[start:end]
        if len(self._data) > FIELD_MAX:
            raise FormError(400, f"form field {self._name!r} is longer than {FIELD_MAX} bytes; only "
                                 f"'{FILE_FIELD}' holds a file")

    def _part_end(self) -> None:
        if self._in_file:
            self.file_done = True
        else:
            self.fields.setdefault(self._name, []).append(self._data.decode("utf-8", "replace"))

    def flush(self) -> None:
        """Write the file's bytes received so far (blocking: called off the event loop)."""
        self.out.write(b"".join(self.pending))
        self.pending, self.pending_size = [], 0


def form_filename(raw: bytes) -> str:
    """The file name a form part names, its quotes and line breaks as the user's file has them."""
    return re.sub("%22|%0D|%0A", lambda m: FORM_ESCAPES[m.group()], raw.decode("utf-8", "replace"))


async def read_upload(request, dest: Path) -> Upload:
    """Read the request's multipart form, writing its ``file`` part to ``dest`` as it arrives.

    Raises:
        FormError: not a multipart form (422, like a form without a file), a form without a ``file``
            part (422), a malformed or cut short one, or one with fields out of bounds (400).
        starlette.requests.ClientDisconnect: the client went away (or the upload limit cut it off).
    """
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise FormError(422, f"send the upload as multipart/form-data with the audio in the field '{FILE_FIELD}'")
    with open(dest, "wb") as out:
        parts = _Parts(out)
        try:
            parser = MultipartParser(params[b"boundary"], parts.callbacks())
            async for chunk in request.stream():
                parser.write(chunk)
                if parts.pending_size >= COPY_BLOCK:
                    await asyncio.to_thread(parts.flush)
            await asyncio.to_thread(parts.flush)
        except FormParserError:
            raise FormError(400, "the body is not valid multipart/form-data; send the file with curl -F or "
                                 "the page") from None
    if parts.filename is None:
        raise FormError(422, f"no '{FILE_FIELD}' field in the form; send the audio in the field '{FILE_FIELD}'")
    if not parts.file_done:
        raise FormError(400, "the form ended before the file did (the upload was cut short); send it again")
    return Upload(parts.filename, parts.fields)
