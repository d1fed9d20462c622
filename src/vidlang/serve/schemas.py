"""The JSON shapes of vidlang serve's API (request bodies and responses), as the OpenAPI schema shows them."""
from pydantic import BaseModel, ConfigDict, Field

MAX_SECONDS = 10_000_000.0  # ~116 days: clip times above it are refused (422) before any arithmetic


class WordOut(BaseModel):
    word: str
    start_s: float | None = Field(description="start (s) of the span where the word matches")
    end_s: float | None
    frame: int = Field(description="encoded frame of the best match")
    score: float
    per_frame: list[float] = Field(description="similarity of the word to each encoded frame: the heat strip")
    span: tuple[int, int]
    char_start: int
    char_end: int
    weight: float


class HitOut(BaseModel):  # visual/spoken fields: see vidlang.retrieval.query.SearchHit
    rank: int
    video_id: str
    score: float
    s1: float
    s2: float
    s3: float | None
    clip_index: int = Field(description="row of the index")
    start_s: float | None
    end_s: float | None
    frames: list[int]
    frame_times: list[float] | None
    alignments: list[WordOut]
    visual: float | None = Field(None, description="the visual score; `score` combines it with the spoken one")
    spoken: float | None = Field(None, description="cosine of the query to the clip's best spoken unit; null: "
                                 "no speech, or not asked")
    spoken_text: str | None = None
    spoken_start_s: float | None = None
    spoken_end_s: float | None = None
    matched: str = Field("visual", description="the field that weighed more in `score`: visual | spoken")
    video_url: str | None = Field(description="/media/... when the source video is under the media root")
    strip_url: str


class SearchOut(BaseModel):
    query: str
    k: int
    clips: int = Field(description="clips in the index")
    hits: list[HitOut]


class ClipCaptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    video_id: str = Field(min_length=1, max_length=512)
    start: float | None = Field(None, ge=0, le=MAX_SECONDS, allow_inf_nan=False,
                                description="seconds; default: the video's start")
    end: float | None = Field(None, ge=0, le=MAX_SECONDS, allow_inf_nan=False,
                              description="seconds; default: the video's end")


class HealthOut(BaseModel):
    status: str
    clips: int
    checkpoint: str = Field(description="the search checkpoint's name (no path)")
    captioner: str | None = Field(description="the captioner checkpoint's name (no path), or null")
    uploads: bool
    uploads_off_reason: str | None
    extractor: str | None
    fps: float | None
    media: bool
    spoken: bool = Field(False, description="the index has a spoken field (search can match what is said)")
    upload_transcripts: str | None = Field(None, description="'whisper' when uploads are transcribed for the "
                                           "captioner, else why not; null without a captioner")


class CaptionOut(BaseModel):
    caption: str
    decoding: str
    features: int = Field(description="feature rows the caption was generated from")
    video_id: str | None = None
    start: float | None = None
    end: float | None = None
    duration: float | None = None
    extractor: str | None = None
    transcript: str | None = Field(None, description="the speech the caption was conditioned on, or null")
    transcript_source: str = Field("none", description="where the transcript came from (Whisper on the upload, "
                                   "the index's transcripts), or 'none: ' and why none was used")
