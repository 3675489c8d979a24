"""Process-wide settings (not per model): env vars CHATBOT_*, a .env file, or arguments."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import ByteSize, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_commas(value: object) -> object:
    # Env vars hold comma lists ("a,b"); YAML/kwargs may already be lists.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CHATBOT_", env_file=".env", extra="ignore", validate_default=True
    )

    config: Path = Field(Path("models.yaml"), description="Model registry YAML file.")
    models_root: Path = Field(Path("./llm_models"), description="Base for relative model paths.")
    data_dir: Path = Field(Path("./data"), description="Knowledge bases, chat history.")
    vector_store: str = Field(
        "faiss",
        description="Knowledge-base store: faiss (on disk under data_dir), a server URL "
        "(postgresql+psycopg://... for pgvector, chroma://host:port) or module:factory.",
    )
    history_db: str | None = Field(
        None, description="SQLAlchemy URL for chat history (default: SQLite in data_dir)."
    )
    host: str = "127.0.0.1"
    port: int = Field(8888, ge=1, le=65535)
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    public_metrics: bool = False
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    request_timeout: float = Field(600.0, gt=0, description="Per-request deadline, seconds.")
    shutdown_grace: float = Field(
        30.0, ge=0, description="On SIGTERM, how long in-flight requests may finish, seconds."
    )
    # Per API key (per client address when no keys are set); None = no limit. Over -> 429.
    rate_limit_rpm: int | None = Field(None, ge=1, description="Requests per minute per key.")
    rate_limit_tpm: int | None = Field(
        None, ge=1, description="Tokens (prompt + completion) per minute per key."
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads of local engines whose entry sets none "
        "(default: the physical cores).",
    )
    # Model pool (chatbot.pool): bytes or "8GiB"; None = no limit. Idle models are evicted
    # least recently used first when a new one would not fit.
    memory_budget_gpu: ByteSize | None = None
    memory_budget_cpu: ByteSize | None = None
    pool_wait_timeout: float = Field(
        300.0, gt=0, description="How long a load waits for busy models to drain, seconds."
    )

    _split = field_validator("api_keys", "cors_origins", mode="before")(_split_commas)

    @field_validator("log_level")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.upper()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
