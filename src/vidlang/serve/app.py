"""``vidlang serve``: search an index and caption clips over HTTP, with a small web page.

    GET  /health                      the index, the captioner, whether uploads are on
    GET  /api/search?q=...&k=10       ranked clips: scores, clip span, per-word aligned spans, per-frame heat
    POST /api/caption/clip            {"video_id", "start"?, "end"?}: caption an indexed video's features
    POST /api/caption/upload          multipart "file": a short mp4/WebM -> the index's extractor (+ Whisper on its
                                      audio for a captioner that reads speech) -> caption
    GET  /api/clips/{row}/strip.jpg   frames of an indexed clip from its source video (JPEG, cached)
    GET  /media/{path}                videos and images under the media root only
    GET  /                            the web page (vidlang/web); the OpenAPI schema is /openapi.json

Errors are JSON ``{"detail": message}`` (serve.guards.ErrorOut, documented per route): bad input gets a 4xx
(vidlang's DataError and invalid parameters 422, ConfigError 400, CheckpointError 409, a non-video upload 415,
a too large one 413, a path outside the media root or a cross-origin POST 403); no body names a server path.
Only the bound host names are answered (Host header), so DNS rebinding reaches nothing. Uploads are decoded
with the extractor that wrote the index's features (same backbone weights, by sha256, same sampling and frame
size) or refused, and decoding stops at --max-upload-seconds of decoded video whatever the container claims.
Caches are LRU-bounded (query tags, frozen text-encoder outputs, video URLs, strip files). No pickle is read.
"""
import logging  # no `from __future__ import annotations`: FastAPI reads the route annotations, closures included
import queue
import tempfile
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from cachetools import LRUCache
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser

from vidlang.errors import ConfigError, VidlangError
from vidlang.serve.schemas import CaptionOut, ClipCaptionIn, HealthOut, SearchOut
from vidlang.serve.speech import UploadSpeech, clip_transcript, index_transcripts, no_speech_reason
from vidlang.serve.guards import DecimalDigits, allowed_hosts_for, error_responses, install_errors, install_guards, scrub_paths
from vidlang.serve.media import (UploadExtractor, default_cache, media_path, media_url, probe_video, sniff_container,
                                 source_video, strip_jpeg, strip_times)

log = logging.getLogger("vidlang.serve")
WEB = Path(__file__).with_name("web")
MAX_QUERY_CHARS = 500
_URL_LOCK = threading.Lock()
QUERY_CACHE = 1024  # LRU entries of per-query caches (POS tags, frozen text-encoder outputs)


# ----------------------------------------------------------------------------- captions in batches
class CaptionBatcher:
    """Captions for many request threads, decoded together: one worker takes whatever is queued (up to
    ``max_batch``) and runs one batched ``vidlang.caption`` (16 beam-4 captions on a 2-core CPU: 3.3 s batched,
    26 s one at a time). A failing batch is retried item by item, so one bad input fails only its own request."""

    def __init__(self, captioner, max_batch: int = 16, caption_fn=None):
        from vidlang.inference import caption

        self.captioner, self.max_batch, self._caption = captioner, max_batch, caption_fn or caption
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._work, daemon=True, name="vidlang-captions").start()

    def __call__(self, features, transcript: str | None = None, timeout: float = 600) -> str:
        future: Future = Future()
        self._queue.put((features, transcript, future))
        return future.result(timeout)

    def _work(self) -> None:
        caption = self._caption
        while True:
            items = [self._queue.get()]
            while len(items) < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            try:
                feats, said = [f for f, _, _ in items], [t for _, t, _ in items]
                texts = caption(self.captioner, feats, said) if any(said) else caption(self.captioner, feats)
                for (_, _, fut), text in zip(items, texts):
                    fut.set_result(text)
            except Exception as e:  # noqa: BLE001 - handed to the waiting request(s)
                if len(items) == 1:
                    items[0][2].set_exception(e)
                    continue
                for f, t, fut in items:
                    try:
                        fut.set_result(caption(self.captioner, f, t) if t else caption(self.captioner, f))
                    except Exception as err:  # noqa: BLE001
                        fut.set_exception(err)


# ----------------------------------------------------------------------------- state
@dataclass
class ServeState:
    index: Any  # ClipIndex
    captioner: Any = None  # LoadedCaptioner
    media_root: Path | None = None
    cache_dir: Path = field(default_factory=default_cache)
    max_upload_bytes: int = 50 << 20
    max_upload_seconds: float = 120.0
    max_upload_frames: int = 7200
    max_k: int = 100
    uploads: UploadExtractor | None = None
    speech: Any = None  # serve.speech.UploadSpeech: Whisper on uploads for a captioner that reads speech
    transcripts: dict | None = None  # the index's transcripts (its spoken field), for captions of indexed clips
    store: Any = None
    store_error: str | None = None
    captions: CaptionBatcher | None = None
    _urls: LRUCache = field(default_factory=lambda: LRUCache(4096))

    @property
    def store_path(self) -> Path | None:
        p = self.index.meta.get("store", {}).get("path")
        return Path(p) if p else None

    def video_url(self, video_id: str) -> str | None:
        with _URL_LOCK:  # an LRU reorders on reads too
            if video_id in self._urls:
                return self._urls[video_id]
        url = media_url(self.media_root, source_video(self.store_path, video_id, self.media_root))
        with _URL_LOCK:
            self._urls[video_id] = url
        return url

    def extractor_record(self) -> dict | None:
        return index_extractor(self.index)

    def need_captioner(self) -> None:
        if self.captioner is None:
            raise HTTPException(503, "no captioner is loaded: start the server with --captioner MVGPT_CHECKPOINT")


def index_extractor(index) -> dict | None:
    """How the index's features were made (index.json; older indexes: the store's meta.json)."""
    meta = index.meta
    return meta.get("extractor") or meta.get("store", {}).get("meta", {}).get("extractor")


def _check_captioner(index, captioner, store) -> None:
    """The captioner must read the index's features: same width, and the same extractor when both record one."""
    if store is not None and store.dim != captioner.model.video_dim:
        raise ConfigError(f"captioner {captioner.checkpoint} reads {captioner.model.video_dim}-d features, but the "
                          f"index's feature store holds {store.dim}-d ones")
    trained_on = ((captioner.meta.get("data_manifest") or {}).get("store") or {}).get("meta", {}).get("extractor")
    mine = index_extractor(index)
    if isinstance(trained_on, dict) and isinstance(mine, dict) and trained_on != mine:
        from vidlang.data.features import differing_keys

        raise ConfigError(f"captioner {captioner.checkpoint} was trained on features of another extractor than the "
                          f"index's ({differing_keys(trained_on, mine)})")


def _open_store(index):
    from vidlang.data.features import open_store

    path = index.meta.get("store", {}).get("path")
    if not path:
        return None, "the index records no feature store"
    try:
        return open_store(path, fps=index.fps), None
    except VidlangError as e:
        return None, f"cannot open the index's feature store {path}: {e}"


# ----------------------------------------------------------------------------- the app
def create_app(index, captioner=None, media_root: str | Path | None = None, *, checkpoint=None,
               cache_dir: str | Path | None = None, max_upload_mb: float = 50, max_upload_seconds: float = 120,
               extractor_weights: str | None = None, max_k: int = 100, device: str = "cpu",
               max_upload_frames: int | None = None, allowed_hosts: list[str] | None = None,
               query_cache: int = QUERY_CACHE, asr_model: str | None = None) -> FastAPI:
    """The FastAPI app. ``index``: a ClipIndex or an index folder (searched with ``checkpoint``, default
    the one it records); ``captioner``: a LoadedCaptioner, an MV-GPT checkpoint/run folder, or None.
    ``max_upload_frames``: most frames an upload may decode to (default 60 per allowed second);
    ``allowed_hosts``: Host-header names answered (default the loopback names, see allowed_hosts_for);
    ``query_cache``: LRU size of the per-query caches (POS tags, frozen text-encoder outputs);
    ``asr_model``: the Whisper model for uploads when the captioner reads speech (default base; "none": off)."""
    from vidlang.inference import LoadedCaptioner, load_model
    from vidlang.retrieval.index import ClipIndex, load_index

    if not isinstance(index, ClipIndex):
        index = load_index(index, checkpoint)
    if captioner is not None and not isinstance(captioner, LoadedCaptioner):
        captioner = load_model(captioner, kind="mvgpt")
    if not (0 < max_upload_mb < float("inf") and 0 < max_upload_seconds < float("inf") and 1 <= max_k <= 10_000
            and query_cache >= 1 and (max_upload_frames is None or max_upload_frames > 0)):
        raise ConfigError("max_upload_mb, max_upload_seconds (finite) and max_upload_frames must be > 0, max_k in "
                          "1..10000 and query_cache >= 1")
    max_upload_frames = int(max_upload_frames or -(-max_upload_seconds * 60 // 1))
    _bound_query_caches(index, query_cache)
    store, store_error = _open_store(index)
    if captioner is not None:
        _check_captioner(index, captioner, store)
    root = Path(media_root).resolve() if media_root is not None else None
    if root is not None and not root.is_dir():
        raise ConfigError(f"media root {media_root} is not a folder")
    state = ServeState(index, captioner, root, Path(cache_dir) if cache_dir else default_cache(),
                       int(max_upload_mb * (1 << 20)), float(max_upload_seconds), max_upload_frames, max_k,
                       store=store, store_error=store_error)
    if captioner is not None:
        state.captions = CaptionBatcher(captioner)
        state.uploads = UploadExtractor(state.extractor_record(), extractor_weights, state.store_path, device)
        state.speech = UploadSpeech(captioner, asr_model, device)
        state.transcripts = index_transcripts(index) if no_speech_reason(captioner.cfg) is None else None

    app = FastAPI(title="vidlang", version=_version(),
                  description="TACo text-to-clip search with word-by-time alignment, MV-GPT captioning.")
    app.state.vidlang = state
    install_errors(app)
    install_guards(app, allowed_hosts or allowed_hosts_for("127.0.0.1"))
    _routes(app, state)
    app.mount("/static", StaticFiles(directory=WEB), name="static")
    return app


def _bound_query_caches(index, size: int) -> None:
    """Every cache that grows with distinct queries gets an LRU of ``size`` entries."""
    loaded = index.loaded
    if hasattr(loaded.weighter, "limit_memo"):
        loaded.weighter.limit_memo(size)
    for module in loaded.model.modules():
        if hasattr(module, "limit_cache"):
            module.limit_cache(size)


def _version() -> str:
    from vidlang.version import __version__

    return __version__


_UPLOAD_DOC = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "maxProperties": 5,  # the file and at most 4 other parts (else 400)
    "properties": {"file": {"type": "string", "format": "binary", "description": "a short mp4/mov/WebM video"}}}}}}}


def _routes(app: FastAPI, st: ServeState) -> None:
    from vidlang.data.dataset import cut_segment
    from vidlang.evaluation.captioning import decoding_name, pool_stamp
    from vidlang.retrieval.query import search

    @app.get("/health", response_model=HealthOut, responses=error_responses(400))
    def health():
        ext = st.extractor_record() or {}
        reason = None if st.uploads is None or st.uploads.reason is None else scrub_paths(st.uploads.reason)
        return {"status": "ok", "clips": len(st.index), "checkpoint": Path(st.index.loaded.checkpoint).name,
                "captioner": None if st.captioner is None else Path(st.captioner.checkpoint).name,
                "uploads": bool(st.uploads and st.uploads.backbone is not None), "uploads_off_reason": reason,
                "extractor": ext.get("backbone"), "fps": st.index.fps, "media": st.media_root is not None,
                "spoken": st.index.spoken is not None,
                "upload_transcripts": None if st.speech is None else (st.speech.reason or "whisper")}

    @app.get("/api/search", response_model=SearchOut, responses=error_responses(400, 422))
    def api_search(q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"[^\s\x1c-\x1f]",
                                           description="the text query (not only spaces)")],
                   k: Annotated[int, Query(ge=1, le=st.max_k, description="clips to return"), DecimalDigits] = 10,
                   rerank: Annotated[bool, Query(description="fusion-head rerank (s3) of the top 50")] = True,
                   spoken_weight: Annotated[float | None, Query(ge=0, le=1 if st.index.spoken is not None else 0,
                                                                allow_inf_nan=False, description=(
                       "share of the spoken-words match: 0..1 when the index was built with transcripts (default "
                       "0.5), else only 0 (visual only)"))] = None):
        hits = search(st.index, q, k, rerank=rerank, spoken_weight=spoken_weight)
        out = [{**h.to_dict(), "video_url": st.video_url(h.video_id),
                "strip_url": f"/api/clips/{h.clip_index}/strip.jpg"} for h in hits]
        return {"query": q, "k": k, "clips": len(st.index), "hits": out}

    @app.post("/api/caption/clip", response_model=CaptionOut, responses=error_responses(400, 403, 404, 409, 422, 503))
    def caption_clip(body: ClipCaptionIn):
        st.need_captioner()
        if st.store is None:
            raise HTTPException(409, st.store_error or "the index's feature store is not available")
        if body.video_id not in st.store:
            raise HTTPException(404, f"unknown video id {body.video_id!r}: not in the index's feature store")
        if body.start is not None and body.end is not None and body.end <= body.start:
            raise HTTPException(422, f"end ({body.end}) must be after start ({body.start})")
        feats = cut_segment(st.store[body.video_id], body.start, body.end, st.store.fps, body.video_id)
        transcript, source = clip_transcript(st.speech, st.transcripts, body.video_id, body.start, body.end)
        text = st.captions(feats, transcript)
        return {"caption": text, "decoding": decoding_name(st.captioner.cfg) + pool_stamp(st.captioner),
                "features": len(feats),
                "video_id": body.video_id, "start": body.start, "end": body.end, "transcript": transcript,
                "transcript_source": source}

    @app.post("/api/caption/upload", response_model=CaptionOut, openapi_extra=_UPLOAD_DOC,
              responses=error_responses(400, 403, 409, 413, 415, 422, 503))
    async def caption_upload(request: Request):
        st.need_captioner()
        if st.uploads is None or st.uploads.backbone is None:
            raise HTTPException(409, f"uploads are off: {st.uploads.reason if st.uploads else 'no captioner'}")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(415, "send the video as multipart/form-data with a 'file' field")
        limit, length = st.max_upload_bytes, request.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise HTTPException(400, "bad Content-Length header")
        if length is not None and int(length) > limit + (64 << 10):  # 64 KiB for the multipart framing
            raise HTTPException(413, f"upload of {int(length)} bytes is over the limit of {limit} bytes")

        async def bounded():
            seen = 0
            async for chunk in request.stream():
                seen += len(chunk)
                if seen > limit + (64 << 10):
                    raise HTTPException(413, f"upload is over the limit of {limit} bytes")
                yield chunk

        form = await MultiPartParser(request.headers, bounded(), max_files=1, max_fields=4).parse()
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, "give the video as the multipart field 'file'")
            if upload.size is not None and upload.size > limit:
                raise HTTPException(413, f"upload of {upload.size} bytes is over the limit of {limit} bytes")
            return await run_in_threadpool(_caption_file, upload)
        finally:
            await form.close()

    def _caption_file(upload: UploadFile) -> dict:
        upload.file.seek(0)
        _, demuxers = sniff_container(upload.file.read(64))
        upload.file.seek(0)
        with tempfile.TemporaryDirectory(prefix="vidlang-upload-") as tmp:
            path = Path(tmp) / "upload.bin"  # never the client's file name
            with open(path, "wb") as f:
                while block := upload.file.read(1 << 20):
                    f.write(block)
            info = probe_video(path, demuxers, st.max_upload_seconds)
            feats, decoded = st.uploads.features(path, st.max_upload_seconds, st.max_upload_frames)
            transcript, source = st.speech.transcript(path, st.max_upload_seconds)
        if info["duration"] is None:
            info["duration"] = decoded.get("duration")
        text = st.captions(feats, transcript)
        return {"caption": text, "decoding": decoding_name(st.captioner.cfg) + pool_stamp(st.captioner),
                "features": len(feats),
                "duration": info["duration"], "extractor": st.uploads.record.get("backbone"),
                "transcript": transcript, "transcript_source": source}

    @app.get("/api/clips/{row}/strip.jpg", response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}, **error_responses(400, 404, 422)})
    def clip_strip(row: Annotated[int, PathParam(ge=0, le=2**40), DecimalDigits]):
        if row >= len(st.index):
            raise HTTPException(404, f"no clip {row}: the index holds {len(st.index)}")
        source = source_video(st.store_path, st.index.video_ids[row], st.media_root)
        if source is None:
            raise HTTPException(404, f"the source video of {st.index.video_ids[row]!r} is not known or not found")
        start, _ = st.index.clip_span(row)
        jpeg = strip_jpeg(source, strip_times(st.index.frames[row], st.index.fps, start), st.cache_dir)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/media/{path:path}", response_class=FileResponse, responses=error_responses(400, 403, 404, 422))
    def media(path: Annotated[str, PathParam(max_length=1024)]):
        try:
            file = media_path(st.media_root, path)
        except (FileNotFoundError, OSError):  # OSError: e.g. a name too long for the file system
            raise HTTPException(404, f"no media file {path!r}") from None
        from vidlang.serve.media import MEDIA_TYPES

        return FileResponse(file, media_type=MEDIA_TYPES[file.suffix.lower()])

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB / "index.html", media_type="text/html")


def serve(index: str, checkpoint: str | None = None, captioner: str | None = None, media_root: str | None = None,
          host: str = "127.0.0.1", port: int = 8000, allowed_hosts: list[str] | tuple[str, ...] = (),
          **settings) -> None:
    """Load everything, then run the app with uvicorn until interrupted. The app answers only requests
    whose Host header names the bound host, a loopback name or one of ``allowed_hosts``."""
    import uvicorn

    hosts = allowed_hosts_for(host, allowed_hosts)
    app = create_app(index, captioner, media_root, checkpoint=checkpoint, allowed_hosts=hosts, **settings)
    log.info("answering Host headers %s", ", ".join(hosts))
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: reachable from other machines (no authentication)", host)
    if host in ("0.0.0.0", "::") and not allowed_hosts:
        log.warning("bound to all addresses but answering only loopback Host names: give --allowed-host NAME "
                    "for each name clients use to reach this machine")
    uvicorn.run(app, host=host, port=port, log_level="info")
