"""The API's answers, as pydantic models: the contract clients and the OpenAPI page see."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# fake/real: the cut at the request's threshold; uncertain: too close to call or too little
# to go on (its reasons say which); no_face: nothing to judge. gateway/server/verdict/rules.py.
Verdict = Literal["fake", "real", "uncertain", "no_face"]


class Reason(BaseModel):
    code: str = Field(
        description="from the catalogue (gateway/README.md, Verdicts and their reasons)"
    )
    message: str = Field(description="the same, for a person, with this answer's figures")


class Provenance(BaseModel):
    file: str
    sha256: str
    source: str
    licence: str


class MetricComparison(BaseModel):
    """One figure of both versions on the same faces, with 95% cluster-bootstrap intervals
    (null: undefined, e.g. an AUC on one class)."""

    serving: float | None
    serving_interval: list[float] | None
    candidate: float | None
    candidate_interval: list[float] | None
    difference: float | None = Field(description="candidate - serving")
    difference_interval: list[float] | None = Field(description="of the paired draws")


class Flip(BaseModel):
    file: str = Field(description="the clip's path under the data, or the file's sha256")
    label: Literal["fake", "real"]
    serving: float = Field(description="the mean of the file's faces' P(fake), serving")
    candidate: float = Field(description="the same, by the candidate")
    to: Literal["fake", "real"] = Field(description="the candidate's verdict at the threshold")


class ComparedSet(BaseModel):
    files: int
    faces: int
    figures: dict[str, MetricComparison] = Field(description="auc, log_loss, ece")
    flips: list[Flip] = Field(description="the files whose verdict would change")
    data: str | None = Field(None, description="the shared clips' folder")
    frames: int | None = Field(None, description="sampled per shared clip")


class Comparison(BaseModel):
    """A candidate measured against the version serving (python -m export.compare)."""

    serving: int
    candidate: int
    created: str
    threshold: float
    bootstrap: int = Field(description="bootstrap draws, by file (by source on the clips)")
    shared_clips: ComparedSet
    held_out_reviews: ComparedSet | None = Field(
        description="the reviewed files the candidate did not train on (null: none given)"
    )
    worse_than_serving: bool = Field(
        description="a lower AUC or a higher log loss on the shared clips: do not promote"
    )
    worse_on: list[str]


class ReviewsLearnt(BaseModel):
    count: int = Field(description="reviews learnt from")
    files: int
    sha256: str = Field(description="of the reviews' ids and labels (export/reviews.py)")
    first: str = Field(description="the oldest review's time")
    last: str = Field(description="the newest review's time")


class VersionInfo(BaseModel):
    """A fine-tuned version's recorded provenance (python -m export.train), and its
    comparison with the version serving once measured."""

    model_config = ConfigDict(extra="allow")

    reviews: ReviewsLearnt | None = Field(None, description="learnt from the review store")
    comparison: Comparison | None = Field(None, description="python -m export.compare")


class ModelSummary(BaseModel):
    name: str
    version: str
    ready: bool
    input_size: int | None = Field(description="native face size of the network, in pixels")
    trained: bool = Field(description="false: random weights, the score means nothing")
    weight: float = Field(description="vote weight in the ensemble (0: reported, not voting)")
    precision: str = Field(
        "fp32",
        description="what the member computes in: fp32, or under the cpu_fast configuration "
        "bf16 (OpenVINO) or int8 (ONNX Runtime), as model_repository/cpu_fast.toml chose for "
        "the serving CPU's units",
    )
    precision_reason: str = Field(
        "",
        description='why, as Triton chose it at start: "bf16: avx512_bf16, amx_bf16 present", '
        '"int8: avx512_vnni present, no BF16 units", "fp32: no BF16 or VNNI units", '
        '"fp32: the cpu configuration, on every CPU" (empty where the config says nothing)',
    )
    weights: Provenance
    trained_on: str = Field("", description="what the weights were trained on, if stated")
    versions: dict[str, VersionInfo] = Field(
        default_factory=dict,
        description="fine-tuned versions in the repository and their provenance "
        "(python -m export.train); `version` is the one serving",
    )
    group: str = Field(
        "", description="specialist group when the vote is the maximum over groups' means"
    )


class CalibrationInfo(BaseModel):
    """How the video's raw score becomes P(fake) (`make calibrate`; model_repository/README.md)."""

    method: str = Field(description="platt: sigmoid(a logit(raw) + b); temperature: b = 0")
    parameters: dict[str, float] = Field(description="a and b")
    vote: str = Field(description="the vote it was fit on; other votes are answered raw")
    versions: dict[str, str] = Field(
        description="each voting member's version it was fit on; another serving: raw"
    )
    uncertain_band: float = Field(
        description="half-width around the threshold, measured on the out-of-sample "
        "calibrated scores (provenance: uncertain_target)"
    )
    provenance: dict[str, str | int | float] = Field(
        description="data (folder, sha256, clips, sources), validation, date"
    )
    figures: dict[str, dict[str, float | list[float]]] = Field(
        description="log loss, Brier score, expected calibration error (and accuracy at the "
        "threshold) of the raw and the leave-one-source-out calibrated scores, each with a "
        "95% bootstrap interval"
    )
    caveat: str = Field(description="how far to trust the figures")


class ModelListing(ModelSummary):
    """A member as GET /api/models lists it. (An answer's models say what answered: never
    the candidate, so it is not named there and answers stay the same beside one.)"""

    candidate: str | None = Field(
        None,
        description="the member's candidate: a version loaded beside the one serving and not "
        "served, only shadow-scored (model_repository/README.md); its figures under "
        "versions[candidate]",
    )


class ModelsAnswer(BaseModel):
    ensemble: str
    profile: str
    vote_rule: str = Field(
        "mean", description="mean (weighted mean of all) or max_of_groups (most fake group mean)"
    )
    ready: bool
    models: list[ModelListing]
    calibration: CalibrationInfo | None = Field(
        None, description="the video score's calibration; null: scores are the raw vote"
    )


class ModelScore(ModelSummary):
    score: float | None = Field(description="P(fake) of the decisive track by this model")
    voting: bool


class FaceResult(BaseModel):
    track: int
    box: list[float] = Field(description="x0, y0, x1, y1 in frame pixels")
    detector_score: float
    p_fake: float = Field(description="the vote of the models for this face (raw, uncalibrated)")
    models: dict[str, float]
    thumbnail: str | None = Field(None, description="data: URL of a small JPEG of the crop")


class FrameResult(BaseModel):
    index: int
    timestamp_s: float
    faces: list[FaceResult]


class TrackResult(BaseModel):
    id: int
    score: float = Field(
        description="the track's vote (raw, uncalibrated: the decisive track's is raw_score)"
    )
    models: dict[str, float]
    frames: list[int] = Field(description="frame indices where this person was found")
    share: float = Field(1.0, description="share of the sampled frames this person is seen in")
    short: bool = Field(
        False,
        description="seen in too few frames (under min_track_share) to decide the verdict alone",
    )
    decisive: bool = Field(False, description="this track's score is the video's")


class MediaFacts(BaseModel):
    kind: Literal["video", "image"]
    format: str
    width: int
    height: int
    fps: float | None
    frame_count: int
    duration_s: float | None
    rotation: int = Field(
        0, description="degrees turned clockwise to make the picture upright (display matrix, EXIF)"
    )
    flipped: bool = Field(False, description="mirrored left-right first, before the rotation")


class Explanation(BaseModel):
    """Where one model saw a fake on one decisive face (occlusion sensitivity)."""

    track: int
    frame: int = Field(description="the frame's index in the clip")
    face: int = Field(description="the face's position in that frame's faces")
    model: str = Field(description="a voting member, or 'ensemble' for the vote")
    p_fake: float = Field(description="this model's P(fake) on the intact face")
    grid: list[list[float]] = Field(
        description="rows top to bottom: how much hiding each cell lowers P(fake)"
    )
    heatmap: str = Field(description="data: URL of a PNG, the map over the face crop")


class CredentialAction(BaseModel):
    action: str = Field(description="what was done: c2pa.created, c2pa.edited…")
    digital_source_type: str | None = Field(
        description="the IPTC digital source type it declares (…/digitalCapture, "
        "…/trainedAlgorithmicMedia), if any"
    )


class ContentCredentials(BaseModel):
    """The file's C2PA content credentials (its active manifest), read and validated offline
    by the C2PA library (preprocess/credentials.py)."""

    state: Literal["invalid", "valid", "trusted"] = Field(
        description="the library's validation: invalid (a signature or hash fails: edited "
        "after signing), valid (intact, signer not anchored), trusted (intact, its chain ends "
        "at one of GATEWAY_CREDENTIALS_TRUST_ANCHORS)"
    )
    signer: str | None = Field(description="the signing certificate's common name")
    issuer: str | None = Field(description="the organisation that issued that certificate")
    claim_generator: str | None = Field(description="the software that wrote the manifest")
    created: str | None = Field(
        description="when the content was created (its c2pa.created action), else the "
        "signature's time stamp, as the manifest states it"
    )
    actions: list[CredentialAction] = Field(description="the manifest's actions (at most 32)")
    ai_generated: bool = Field(
        description="an action declares trainedAlgorithmicMedia or "
        "compositeWithTrainedAlgorithmicMedia"
    )
    failures: list[str] = Field(
        default_factory=list, description="the library's validation failure codes, if invalid"
    )


class Timings(BaseModel):
    upload: float = 0.0
    decode: float = 0.0
    detect: float = 0.0
    infer: float = 0.0
    aggregate: float = 0.0
    explain: float = 0.0
    total: float = 0.0


class SkippedModel(BaseModel):
    name: str
    reason: str = Field(description="why it was not run: it cannot vote (models=all runs it)")


class DetectAnswer(BaseModel):
    request_id: str
    answer_id: str | None = Field(
        None,
        description="with reviews on (GATEWAY_REVIEWS_ENABLED): what `POST /api/reviews` "
        "names to review this answer, by the same API key, within "
        "GATEWAY_REVIEWS_ANSWER_RETENTION_S",
    )
    filename: str
    bytes: int | None = Field(None, description="size of the uploaded (or fetched) file")
    sha256: str | None = Field(None, description="SHA-256 of the uploaded (or fetched) file, hex")
    verdict: Verdict
    reasons: list[Reason] = Field(
        default_factory=list,
        description="why the verdict is not plainly fake or real: always some for uncertain "
        "and no_face; for fake and real, what weakened them",
    )
    score: float | None = Field(
        description="P(fake) of the video, calibrated (GET /api/models: calibration) when the "
        "request votes as the calibrated vote, else the raw vote; the verdict cuts it at "
        "`threshold`; null when no face was found"
    )
    raw_score: float | None = Field(
        None,
        description="the decisive track's vote before calibration (the scale of tracks' and "
        "faces' scores); null when no face was found",
    )
    threshold: float
    ensemble: str | None = Field(description="the Triton ensemble called, or null for members")
    models: list[ModelScore]
    tracks: list[TrackResult]
    frames: list[FrameResult]
    media: MediaFacts
    timings_ms: Timings
    notes: list[str] = Field(description="what a reader must know, e.g. untrained models")
    skipped: list[SkippedModel] = Field(
        default_factory=list,
        description="members not run because they cannot vote (models=all runs them)",
    )
    explanations: list[Explanation] = Field(
        default_factory=list,
        description="with explain=true: saliency maps of the decisive faces, per voting model",
    )
    content_credentials: ContentCredentials | None = Field(
        None,
        # absent, not null, when the file carries none
        exclude_if=lambda value: value is None,
        description="the file's C2PA content credentials; absent when it carries none",
    )


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorAnswer(BaseModel):
    error: ErrorDetail


class ServiceInfo(BaseModel):
    service: str
    version: str
    status: Literal["ready", "unavailable"]
    triton_url: str
    ensemble: str
    profile: str | None
    detector: str
    frames: int
    threshold: float
    max_upload_mb: int
    formats: list[str]
    pdf_reports: bool = Field(
        description="whether POST /api/report?format=pdf can print here (a Chromium found as "
        "the gateway started); false: 406 pdf_unavailable, the HTML report only"
    )
    endpoints: dict[str, str]
