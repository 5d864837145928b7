"""What classify runs with: ``ClassifyConfig`` (the parameter of classify-flow). No torch here, so
the command line can check a request (model, batches, choices) before it loads a model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from galaxy_models.catalogs.drift import DEFAULT_CONFIDENCE_DROP, DEFAULT_JS_THRESHOLD
from galaxy_models.data.images import DEFAULT_MAX_IMAGE_BYTES
from galaxy_models.domain import LOW_CONFIDENCE, ModelRef, ModelRefText, check_name

EngineName = Literal["auto", "torch", "openvino"]
DecodeName = Literal["auto", "pillow", "torchvision"]
PrecisionName = Literal["auto", "fp32", "bf16", "int8"]


class ClassifyConfig(BaseModel):
    """What to classify, with which model, and how."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    store: str = Field("./galaxy-data", description="store with incoming/ and models/; catalogs/ is written there")
    model: ModelRefText = Field("cs_resnet50", description="model name under models/, optionally NAME@VERSION")
    batches: tuple[str, ...] | None = Field(None, description="batch ids; None: every batch without a complete catalog")
    batch_size: int = Field(64, ge=1, description="images per forward pass")
    part_size: int = Field(1000, ge=1, description="images per catalog part (and per inference task)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    engine: EngineName = Field("auto", description="auto: openvino on a CPU where installed, else torch")
    precision: PrecisionName = Field(
        "auto",
        description="auto: the fastest precision (int8 where the model has a quantised copy, else bf16 where the "
        "hardware has it) that gives at least 99.5% of the validation split's classes as fp32 does, else fp32; "
        "int8 runs on openvino (a CPU) and builds the model's quantised copy if it has none",
    )
    workers: int = Field(4, ge=1, description="threads reading and decoding images")
    decode: DecodeName = Field(
        "auto",
        description="how images are decoded: pillow in the reading threads; torchvision: plain JPEGs in batches on "
        "the engine's device (nvJPEG on a GPU), anything else by Pillow, with the same rows; auto: torchvision when "
        "the engine runs on a GPU, else pillow",
    )
    max_image_bytes: int = Field(
        DEFAULT_MAX_IMAGE_BYTES, ge=1, description="larger image files get an unreadable row, unread"
    )
    low_confidence: float = Field(
        LOW_CONFIDENCE, ge=0, le=1, description="flag rows whose top probability is below this"
    )
    tta: bool = Field(
        False,
        description="test-time augmentation: average the 8 rotated and mirrored views of each image "
        "(one forward pass of 8 x batch_size images: about 8x the compute)",
    )
    embeddings: bool = Field(
        False,
        description="store each galaxy's pooled features, projected to 64 numbers by a PCA fitted on the model's "
        "training split, in the catalog's embedding column (for similarity search)",
    )
    drift_threshold: float = Field(
        DEFAULT_JS_THRESHOLD, ge=0, le=1,
        description="flag a batch whose predicted class shares diverge from the training split's by more "
        "than this Jensen-Shannon divergence (bits)",
    )  # fmt: skip
    confidence_drop: float = Field(
        DEFAULT_CONFIDENCE_DROP, ge=0, le=1,
        description="flag a batch whose mean confidence is this much below the validation split's",
    )  # fmt: skip
    runner: Literal["default", "dask"] = Field("default", description="dask: parts run on a Dask cluster")
    dask_address: str | None = Field(None, description="scheduler address; None: a LocalCluster on this host")
    dask_workers: int = Field(2, ge=1, description="LocalCluster worker processes")

    @field_validator("batches")
    @classmethod
    def _check_batches(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for batch in value or ():
            check_name(batch, "batch id")
        return value

    @property
    def ref(self) -> ModelRef:
        return ModelRef.parse(self.model)
