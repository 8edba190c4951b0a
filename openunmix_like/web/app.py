"""The HTTP side of ``umx-web``: the JSON API, server-sent events and the static page (FastAPI).

Every path parameter is matched against a strict pattern before any file is touched: a job id is
32 hex digits, a stem or player track one of the job's own names; anything else is a 404, so no request reads
outside the jobs folder.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import shutil
import threading
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Dict, List, Optional
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect

from ..errors import AudioError
from .jobs import JobError, JobManager, track_name
from .upload import FormError, read_upload

STATIC = Path(__file__).parent / "static"
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg"}
EVENT_POLL_S = 0.25
KEEPALIVE_S = 15.0
MULTIPART_SLACK = 64 * 1024  # the form's other fields and part headers


class UploadLimit:
    """Refuse an upload over the limit (413), storing no more of it than the limit.

    An upload whose announced size (Content-Length) is over the limit is refused before any of it is
    read; one of unannounced length (chunked) is counted as it arrives and cut off once past the
    limit: the app is told the client went away, and its answer is replaced by the 413. Without
    this, the whole body would be received and stored before its size is known.
    """

    def __init__(self, app, max_bytes: int, limit_mb: float):
        self.app, self.max_bytes, self.limit_mb = app, max_bytes, limit_mb

    async def __call__(self, scope, receive, send):
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/api/jobs"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, receive, send, f"upload of {int(length) / 2**20:.1f} MB")
            return
        received, over, started = 0, False, False

        async def counted_receive():
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                over = received > self.max_bytes
                if over:
                    return {"type": "http.disconnect"}
            return message

        async def held_send(message):
            nonlocal started
            if not over:
                started = True
                await send(message)

        try:
            await self.app(scope, counted_receive, held_send)
        except Exception:  # the app's trouble with a body cut short
            if not over or started:
                raise
        if over and not started:
            await self._refuse(scope, receive, send, "upload")

    async def _refuse(self, scope, receive, send, what: str) -> None:
        detail = (f"{what} is larger than this server's limit of {self.limit_mb:g} MB (umx-web --max-upload-mb); "
                  "compress or cut the file, or raise the limit")
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


class SameSite:
    """Refuse what a web page elsewhere makes the user's browser ask of this server.

    Any page the user visits can send requests to 127.0.0.1 through the browser: a form posted there
    uploads files (cross-site request forgery), and a name of the page's own that it makes resolve to
    127.0.0.1 (DNS rebinding) lets it read the job list and the stems like this server's own page.
    So a request that changes something (not GET or HEAD) and names an Origin must come from this
    server's origin; and with ``local_only`` (the server listens on a loopback address) the Host a
    request names must be ``localhost`` or a loopback address: the name a rebinding page uses is neither.
    """

    def __init__(self, app, local_only: bool):
        self.app, self.local_only = app, local_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1").lower()
        origin = headers.get(b"origin")
        if self.local_only and host and not _is_local(host):
            reason = (f"requests for host {host[:100]!r} are refused: this server listens on this machine only; "
                      "open it as http://127.0.0.1:PORT/ (umx-web --host to listen elsewhere)")
        elif scope["method"] not in ("GET", "HEAD") and origin is not None and \
                urlsplit(origin.decode("latin-1").lower()).netloc != host:
            reason = "requests from another site's page are refused; use this server's own page or a script"
        else:
            await self.app(scope, receive, send)
            return
        await JSONResponse({"detail": reason}, status_code=403)(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address, as ``umx-web --host`` takes) is ``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_local(host: str) -> bool:
    """Whether a Host header (``name[:port]``) names this machine (:func:`is_loopback`)."""
    try:
        name = urlsplit(f"//{host}").hostname or ""
    except ValueError:  # a malformed Host, such as an unclosed "["
        return False
    return is_loopback(name)


def _within_jobs(message: str, jobs_dir: Path) -> str:
    """``message`` with the jobs folder's path left out of the paths it names (``<id>/stems/bass.wav``):
    where the server keeps its files is no business of a client, which may be on another machine."""
    for folder in {str(jobs_dir), str(jobs_dir.resolve())}:
        message = message.replace(folder.rstrip("/") + "/", "")
    return message


def _not_found(what: str = "no such job") -> HTTPException:
    return HTTPException(status_code=404, detail=what)


def split_targets(values: Optional[List[str]]) -> Optional[List[str]]:
    """``targets`` fields: repeated, or one field of names separated by commas or spaces."""
    names = [n for v in values or [] for n in re.split(r"[,\s]+", v) if n]
    return names or None


def job_options(fields: Dict[str, List[str]]) -> dict:
    """:meth:`JobManager.submit`'s options from a form's fields; an empty or absent field is the default,
    a repeated one (but ``targets``) counts once, its last value.

    Raises:
        JobError: ``bits`` or ``bitrate`` that is not a whole number.
    """
    def last(name: str) -> Optional[str]:
        return (fields.get(name) or [""])[-1].strip() or None

    def number(name: str) -> Optional[int]:
        text = last(name)
        if text is not None and not re.fullmatch(r"-?[0-9]{1,6}", text):  # a longer one is no option either
            raise JobError(f"{name} {text[:40]!r} is not a whole number; leave it out or give e.g. "
                           f"{'24' if name == 'bits' else '320'}")
        return None if text is None else int(text)

    bits = number("bits")
    return {"model": last("model"), "targets": split_targets(fields.get("targets")), "residual": last("residual"),
            "ext": last("ext") or "wav", "bits": 16 if bits is None else bits, "bitrate": number("bitrate")}


def create_app(manager: JobManager, models: dict, local_only: bool = False) -> FastAPI:
    """The web app over a (not yet started) :class:`JobManager`; starting the app starts it.

    ``app.state.closing`` is a :class:`threading.Event`: the server sets it when asked to stop, which
    ends the open event streams (a server waits for open responses before it stops).

    Args:
        manager: the jobs.
        models: :func:`openunmix_like.web.models.discover_models` output, shown by ``GET /api/models``.
        local_only: answer only requests naming this machine as their host (the server listens on a
            loopback address): see :class:`SameSite`.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager.start()
        try:
            yield
        finally:
            await asyncio.to_thread(manager.stop)

    app = FastAPI(title="umx-web", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.manager = manager
    app.state.closing = threading.Event()
    app.add_middleware(UploadLimit, max_bytes=int(manager.max_upload_mb * 1024 * 1024) + MULTIPART_SLACK,
                       limit_mb=manager.max_upload_mb)
    app.add_middleware(SameSite, local_only=local_only)  # added last: it runs first
    _add_job_routes(app, manager)
    _add_file_routes(app, manager)

    @app.get("/api/models")
    def list_models() -> JSONResponse:
        return JSONResponse([{"name": name, "label": m["label"], "targets": m["targets"]}
                             for name, m in models.items()])

    @app.get("/api/limits")
    def limits() -> JSONResponse:
        return JSONResponse({"max_minutes": manager.max_minutes, "max_upload_mb": manager.max_upload_mb})

    @app.get("/api/events")
    async def events(request: Request) -> StreamingResponse:
        return StreamingResponse(_event_stream(request, manager, app.state.closing), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/favicon.ico")
    def favicon() -> FileResponse:
        # The page names favicon.svg; browsers (and other clients) that ask for the usual name get it too,
        # rather than a 404 in their console.
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")

    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    return app


def _add_job_routes(app: FastAPI, manager: JobManager) -> None:
    @app.post("/api/jobs")
    async def create_job(request: Request) -> Response:
        # The form is read here rather than by FastAPI, whose parser spools the file to the system's
        # temporary folder first (see upload.py).
        staging = await asyncio.to_thread(manager.new_staging, "upload")
        try:
            upload = await read_upload(request, staging / "upload")
            options = job_options(upload.fields)
            job = await asyncio.to_thread(manager.submit, upload.filename, staging / "upload", **options)
        except (FormError, JobError) as exc:
            status = exc.status if isinstance(exc, FormError) else 400
            return JSONResponse({"detail": str(exc)}, status_code=status)
        except ClientDisconnect:  # gone (or cut off by UploadLimit, which answers): nobody reads this
            return Response(status_code=400)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        return JSONResponse({"id": job.id}, status_code=201)

    @app.get("/api/jobs")
    def list_jobs() -> JSONResponse:
        return JSONResponse([job.public() for job in manager.list()])

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str) -> JSONResponse:
        job = manager.get(job_id)
        if job is None:
            raise _not_found()
        return JSONResponse(job.public())

    @app.delete("/api/jobs/{job_id}")
    def delete_job(job_id: str) -> JSONResponse:
        outcome = manager.cancel_or_delete(job_id)
        if outcome is None:
            raise _not_found()
        return JSONResponse({"id": job_id, "result": outcome})


def _add_file_routes(app: FastAPI, manager: JobManager) -> None:
    @app.get("/api/jobs/{job_id}/stems/{name}")
    def get_stem(job_id: str, name: str) -> FileResponse:
        path = manager.stem_path(job_id, name)
        if path is None:
            raise _not_found("no such stem")
        job = manager.get(job_id)
        if job is None:  # deleted meanwhile
            raise _not_found("no such stem")
        return FileResponse(path, media_type=MEDIA_TYPES[job.ext], filename=f"{track_name(job.filename)}-{path.name}")

    @app.get("/api/jobs/{job_id}/zip")
    async def get_zip(job_id: str) -> FileResponse:
        path = await asyncio.to_thread(manager.zip_path, job_id)
        if path is None:
            raise _not_found("no finished job with this id")
        job = manager.get(job_id)
        if job is None:  # deleted meanwhile
            raise _not_found("no finished job with this id")
        return FileResponse(path, media_type="application/zip", filename=f"{track_name(job.filename)}-stems.zip")

    @app.get("/api/jobs/{job_id}/preview")
    async def get_preview(job_id: str) -> JSONResponse:
        try:
            info = await asyncio.to_thread(manager.preview_info, job_id)
        except AudioError as exc:
            raise HTTPException(status_code=422, detail=_within_jobs(str(exc), manager.jobs_dir)) from None
        if info is None:
            raise _not_found("no finished job with this id")
        return JSONResponse(info)

    @app.get("/api/jobs/{job_id}/preview/{track}")
    async def get_preview_pcm(job_id: str, track: str, start: int = 0, frames: int = 441000) -> Response:
        try:
            data = await asyncio.to_thread(manager.preview_pcm, job_id, track, start, frames)
        except JobError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        if data is None:
            raise _not_found("no such track")
        return Response(data, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})

    @app.get("/api/jobs/{job_id}/mixture")
    def get_mixture(job_id: str) -> FileResponse:
        path = manager.input_path(job_id)
        if path is None:
            raise _not_found()
        return FileResponse(path, media_type="application/octet-stream")


async def _event_stream(request: Request, manager: JobManager, closing: threading.Event):
    """``job`` events (a job's public fields) when a job changes, ``removed`` when one is gone.

    Ends when the client goes or ``closing`` is set.
    """
    sent: dict = {}
    idle = 0.0
    yield "retry: 1000\n\n"
    while not closing.is_set() and not await request.is_disconnected():
        current = {job.id: job.public() for job in manager.list()}
        changes = []
        for job_id, state in current.items():
            if sent.get(job_id) != state:
                changes.append(f"event: job\ndata: {json.dumps(state)}\n\n")
        for job_id in set(sent) - set(current):
            changes.append(f"event: removed\ndata: {json.dumps({'id': job_id})}\n\n")
        sent = current
        if changes:
            idle = 0.0
            yield "".join(changes)
        elif idle >= KEEPALIVE_S:
            idle = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(EVENT_POLL_S)
        idle += EVENT_POLL_S
