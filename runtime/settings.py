"""One settings object per process (pydantic-settings, ``VIDEOGEN_`` env prefix).

Sources, highest first: environment variables, ``<data_dir>/stack.env`` (written by
``videogen up`` for the embedded stack), defaults. Printed masked at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = ".videogen"


def data_dir_from_env() -> Path:
    return Path(os.environ.get("VIDEOGEN_DATA_DIR", DEFAULT_DATA_DIR)).expanduser()


def stack_env_file() -> Path:
    return data_dir_from_env() / "stack.env"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VIDEOGEN_", extra="ignore", frozen=True)

    # --- where things are --------------------------------------------------------------
    data_dir: Path = Field(Path(DEFAULT_DATA_DIR), description="embedded servers' data, logs, stack.env")
    embedded: bool = Field(True, description="`videogen up` starts nats-server + weed mini; false: provision only")
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma separated")
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_creds_file: Path | None = None
    nats_tls_ca: Path | None = Field(None, description="CA bundle (PEM) that signs the NATS servers' certificates: "
                                                       "TLS to NATS (also what a tls:// URL verifies against)")
    s3_endpoint: str | None = Field("http://127.0.0.1:8333", description="S3 API endpoint; unset for AWS")
    s3_public_endpoint: str | None = Field(None, description="endpoint used in presigned URLs (default: s3_endpoint)")
    s3_region: str = "us-east-1"
    s3_access_key: SecretStr = SecretStr("videogen")
    s3_secret_key: SecretStr = SecretStr("videogen-dev-secret")
    bucket: str = "videogen"
    # --- behaviour ---------------------------------------------------------------------
    log_level: str = "INFO"
    log_format: str = Field("json", description="json | console")
    webhook_secret: SecretStr = Field(
        SecretStr("whsec_dmlkZW9nZW4tZGV2ZWxvcG1lbnQtc2VjcmV0LWtleQ=="),
        description="Standard Webhooks signing secret(s), whsec_..., space separated for rotation",
    )
    webhook_allow_hosts: list[str] = Field(
        default_factory=list,
        description="hosts/IPs/CIDRs webhooks may target despite the SSRF guard (local development)",
    )
    webhook_timeout_s: float = 10.0
    webhook_retry_schedule_s: list[float] = Field(
        default_factory=lambda: [0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        description="delay before each delivery attempt (first = immediately)",
    )
    input_allow_hosts: list[str] = Field(default_factory=list, description="SSRF allow-list for input URLs")
    input_buckets: list[str] = Field(default_factory=list,
                                     description="buckets s3:// inputs may come from (empty: any readable)")
    preprocess_workers: int | None = Field(None, ge=1, description="pose/frame worker threads (default: cores)")
    preprocess_streaming: bool = Field(True, description="animate: plan and render while preprocessing goes on "
                                       "(segment k starts once its window's frames are stored); False: serial")
    preprocess_part_frames: int = Field(256, ge=32, multiple_of=32, description="animate: frames per preprocess part "
                                        "(whole 32-frame chunks); a longer job is split into parts that any "
                                        "preprocess worker processes; the face box's smoothing restarts at every "
                                        "part boundary in every mode, so the bytes never depend on the split")
    preprocess_split: bool = Field(True, description="animate: hand parts after the first to other preprocess "
                                   "workers (videogen.work.preprocess_part); False: one worker does every part")
    status_ttl_s: int = Field(7 * 86400, description="how long finished jobs stay in KV videogen-jobs")
    heartbeat_s: float = Field(10.0, description="in_progress interval while a stage works on a message")
    # --- GPU runner --------------------------------------------------------------------
    models_dir: Path = Field(Path("models"), description="local diffusers-format checkpoints: <dir>/<model>/")
    runner_model: str = "tiny-wan"
    runner_device: str = Field("auto", description="auto | cpu | cuda")
    runner_dtype: str = Field("auto", description="auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16")
    runner_warmup: bool = True
    runner_cache: str = Field("none", description="step cache: none | first_block | mag | taylorseer | pab "
                                                  "(verified at warm-up to really skip compute)")
    runner_memory_budget_bytes: int | None = Field(
        None, description="planner memory budget; default: device free memory")
    runner_max_window_frames: int | None = Field(
        None, ge=1, description="longest window this runner renders (a GPU smaller than the planner's budget): "
                                "longer segments are re-planned before any compute, like after an out-of-memory")
    sp_backend: str = Field("native", description="sequence-parallel attention of a multi-GPU runner: native | "
                                                  "ulysses (xfuser is refused; see gpu_runner/sequence_parallel.py)")
    runner_ranks: int = Field(1, ge=1, description="GPUs of one runner group (torchrun --nproc_per_node); "
                                                   "the planner's memory and cost models split windows over them")
    runner_cfg_parallel: bool = Field(False, description="half the ranks compute the unconditional CFG branch "
                                                         "(2·k ranks: 2 CFG x k Ulysses)")
    runner_attention_backend: str = Field("native", description="diffusers attention backend: native (SDPA) | flash "
                                                                "| _flash_3 | sage ... (CUDA; an error if missing)")
    runner_compile: bool = Field(False, description="torch.compile the transformer blocks (compiled at warm-up)")
    runner_fp8: bool = Field(False, description="FP8 DiT weights with torchao (CUDA, compute capability >= 8.9)")
    runner_vae_tiling: bool = Field(False, description="tiled VAE decode/encode (bounded memory)")
    runner_offload: str = Field("none", description="none | model | block: CPU offload for GPUs smaller than the "
                                                    "model (CUDA)")
    runner_shard: str = Field("none", description="none | fsdp: DiT + text encoder sharded (FSDP2) over the ranks "
                                                  "that run the same forwards (the group, or each CFG half)")
    runner_offload_text_encoder: bool | None = Field(
        None, description="text encoder/CLIP on the CPU between encodes (default: on CUDA)")
    runner_memory_margin_bytes: int = Field(3 << 30, ge=0, description="kept free below the device's free memory "
                                                                       "when the runner checks a window fits")
    health_port: int | None = Field(None, description="port for /healthz /readyz /metrics; unset: off")
    runner_io: Literal["process", "thread"] = Field(
        "process", description="rank 0's bus/S3/encode work: in a process of its own (the compute thread keeps "
                               "the GIL) or on a thread of the rank")
    runner_heartbeat_s: float = Field(3.0, gt=0, description="in_progress interval of a runner holding a segment "
                                                            "(rank 0's I/O thread; the runner ack wait is 10 s)")
    runner_spool_segments: int = Field(4, ge=1, description="rendered segments a runner keeps while their upload "
                                                           "is retried (S3/NATS down); when full it stops pulling")
    runner_spool_bytes: int = Field(2 << 30, ge=1, description="bytes of encoded segments held for retried uploads")
    runner_upload_backoff_max_s: float = Field(15.0, gt=0, description="longest wait between upload retries")
    no_runner_timeout_s: float = Field(300.0, gt=0, description="a queued job whose model has had no live runner "
                                                               "this long fails with no_runner (retryable)")
    # --- broker ------------------------------------------------------------------------
    nats_replicas: int = Field(1, ge=1, le=5, description="replicas of every stream and KV bucket (3 on a 3-node "
                                                          "cluster: infra/, or nats_cluster_size=3)")
    nats_cluster_size: int = Field(1, ge=1, le=5, description="embedded stack: nats-servers in a loopback cluster "
                                                              "(3: streams and KV become R3, one node may die)")
    # --- trust boundary (issue 13; docs in README "Security model") ------------------------
    webhook_tenant_secrets: dict[str, SecretStr] = Field(
        default_factory=dict, description="per-tenant signing secret(s), space separated for rotation; "
                                          "tenant 'default' falls back to webhook_secret")
    lora_max_bytes: int = Field(1 << 30, ge=1, description="largest LoRA file a runner fetches")
    lora_allow_prefixes: list[str] = Field(
        default_factory=lambda: ["loras/", "uploads/"],
        description="key prefixes in `bucket` a LoRA may come from without a sha256; others need one")
    max_job_gpu_seconds: float = Field(6 * 3600.0, gt=0, description="admission: planner-modelled GPU "
                                                                    "seconds one job may cost")
    max_job_frame_pixels: int = Field(81 * 1280 * 720 * 8, gt=0, description="admission: frames x width x "
                                                                            "height of one job")
    max_stitch_bytes: int = Field(8 << 30, gt=0, description="admission: stitch's modelled peak memory")
    max_queued_jobs_per_tenant: int = Field(100, ge=1, description="queued + preprocessing jobs per tenant")
    max_running_jobs_per_tenant: int = Field(20, ge=1, description="running + stitching jobs per tenant")
    submit_rate_per_minute: int = Field(120, ge=1, description="submissions per tenant per minute")
    gateway_host: str = Field("127.0.0.1", description="HTTP gateway listen address (0.0.0.0 in a container)")
    gateway_port: int = Field(8080, ge=0, le=65535, description="HTTP gateway port (/v1/videos, console at /)")

    def masked(self) -> dict[str, Any]:
        from runtime.trust import strip_credentials

        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(getattr(self, name), SecretStr):
                out[name] = "***" if getattr(self, name).get_secret_value() else ""
            elif name in ("nats_url", "s3_endpoint", "s3_public_endpoint"):
                out[name] = strip_credentials(value)  # user:pass@ never reaches a log
            elif name == "webhook_tenant_secrets":
                out[name] = {tenant: "***" for tenant in value}
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out

    @property
    def presign_endpoint(self) -> str | None:
        return self.s3_public_endpoint or self.s3_endpoint


def load_settings(**overrides: Any) -> Settings:
    env_file = stack_env_file()
    kwargs: dict[str, Any] = dict(overrides)
    if env_file.is_file():
        kwargs.setdefault("_env_file", str(env_file))
    return Settings(**kwargs)
