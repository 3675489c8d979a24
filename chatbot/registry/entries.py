"""The schema of one registry entry (chat or embeddings model), validated by pydantic."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

Kind = Literal["chat", "embeddings"]


class RegistryError(ValueError):
    """A bad registry file. The message names the file, the entry and the field."""


class Generation(BaseModel):
    """Per-model generation defaults; requests may override them."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class EngineOptions(BaseModel):
    """Options for local engines. Unknown keys pass through to the engine (e.g. vLLM args)."""

    model_config = ConfigDict(extra="allow")

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    trust_remote_code: bool = False
    max_model_len: int | None = Field(None, ge=1)
    # CPU threads (torch / llama.cpp); None: CHATBOT_THREADS, else the physical cores.
    # Embeddings on CPU run that many single-threaded encode workers instead.
    threads: int | None = Field(None, ge=1)
    # Embeddings: texts per forward pass (32 was the fastest on CPU; bench/kb_ingest.py).
    batch_size: int = Field(32, ge=1)


class Replica(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str
    api_key: SecretStr | None = None


class RouterOptions(BaseModel):
    """How an entry with `replicas`/`fallbacks` routes (see model_adapters.router.engine)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["least-in-flight", "round-robin"] = "least-in-flight"
    cooldown: float = Field(30.0, ge=0, description="Seconds a failed replica is skipped.")
    backoff: float = Field(0.1, ge=0, description="First retry delay, doubled per retry.")
    max_backoff: float = Field(2.0, ge=0)


class DeployOptions(BaseModel):
    """How `chatbot deploy` runs this entry on a Ray cluster (chatbot.deploy.ray_serve):
    `replicas` to start with; with `min`/`max`, Ray Serve autoscales between them on
    requests in flight per replica. Resources are per replica."""

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(1, ge=0)
    min: int | None = Field(None, ge=0)
    max: int | None = Field(None, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory: ByteSize | None = Field(None, description="RAM per replica, e.g. 2GiB.")
    max_ongoing_requests: int = Field(16, ge=1, description="Per replica; more wait.")
    target_ongoing_requests: float = Field(4.0, gt=0, description="Autoscaling target.")
    upscale_delay: float = Field(30.0, ge=0, description="Seconds over target to scale up.")
    downscale_delay: float = Field(600.0, ge=0, description="Seconds under to scale down.")
    look_back: float = Field(30.0, gt=0, description="Seconds of load averaged to scale.")

    @model_validator(mode="after")
    def _bounds(self) -> DeployOptions:
        low = self.min if self.min is not None else min(self.replicas, 1)
        high = self.max if self.max is not None else max(self.replicas, low)
        if not low <= self.replicas <= high:
            raise ValueError(f"need min <= replicas <= max, got {low} <= {self.replicas} <= {high}")
        return self

    @property
    def autoscaling(self) -> bool:
        return self.min is not None or self.max is not None


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Kind = "chat"
    description: str = ""
    # Local: a path and engines in preference order.
    path: str | None = None
    engines: list[str] = Field(default_factory=list)
    # Online: a provider (engine) and the remote model id.
    provider: str | None = None
    model: str | None = None
    base_url: str | None = None
    api_key: SecretStr | None = None
    organization: str | None = None
    api_version: str | None = None
    deployment: str | None = None
    http_proxy: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float | None = Field(None, gt=0)
    max_retries: int = Field(2, ge=0)
    replicas: list[Replica] = Field(default_factory=list)
    fallbacks: list[str] = Field(default_factory=list)
    router: RouterOptions = Field(default_factory=RouterOptions)
    params: dict[str, Any] = Field(default_factory=dict, description="Extra provider params.")
    # Behaviour.
    defaults: Generation = Field(default_factory=Generation)
    options: EngineOptions = Field(default_factory=EngineOptions)
    lazy: bool = False
    tool_parser: str = "auto"
    max_batch_size: int = Field(8, ge=1)
    max_queue: int = Field(256, ge=1)
    deploy: DeployOptions = Field(default_factory=DeployOptions)  # `chatbot deploy` (Ray)

    # Filled in by the registry, not by users.
    resolved_path: Path | None = Field(None, exclude=True)
    # Why this entry cannot be used here (e.g. its path does not exist on this machine):
    # not served, and an error only when something asks for it.
    unavailable: str | None = Field(None, exclude=True)

    @field_validator("engines", mode="before")
    @classmethod
    def _one_engine(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def is_local(self) -> bool:
        return self.path is not None

    def generation_defaults(self) -> dict[str, Any]:
        """The entry's `defaults` as chat-model fields (an empty `stop` left out)."""
        defaults = self.defaults.model_dump(exclude_none=True)
        if not defaults.get("stop"):
            defaults.pop("stop", None)
        return defaults
