# ---- image ------------------------------------------------------------------------------------
variable "namespace" {
  description = "Namespace of the videogen workloads (created by the caller)."
  type        = string
}

variable "image" {
  description = "videogen container image, pinned: ghcr.io/videogen/videogen:<version> or ...@sha256:<digest>."
  type        = string

  validation {
    condition = (
      can(regex("^[^\\s]+(@sha256:[0-9a-f]{64}|:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})$", var.image))
      && !endswith(var.image, ":latest")
    )
    error_message = "image must carry an explicit version tag (not :latest) or a sha256 digest."
  }
}

variable "image_pull_policy" {
  description = "imagePullPolicy of every videogen container."
  type        = string
  default     = "IfNotPresent"
}

variable "image_pull_secrets" {
  description = "Names of docker-registry secrets in the namespace for a private registry."
  type        = list(string)
  default     = []
}

# ---- where things are -------------------------------------------------------------------------
variable "nats" {
  description = <<-EOT
    NATS connection: url (VIDEOGEN_NATS_URL), credentials_secret (a Secret in this namespace with
    VIDEOGEN_NATS_USER / VIDEOGEN_NATS_PASSWORD: the app user, for the gateway),
    stage_credentials_secrets (stage, and "runner" => a Secret of the same shape with that stage's own
    user, modules/nats output stage_credentials_secrets: every stage Deployment and the runners use it), and for KEDA the monitoring endpoint (host:port of
    the headless service's monitoring port) and the account ("$G" without accounts).
  EOT
  type = object({
    url                       = string
    credentials_secret        = string
    stage_credentials_secrets = map(string)
    namespace                 = string
    monitoring_endpoint       = string
    account                   = optional(string, "$G")
  })
}

variable "s3" {
  description = <<-EOT
    Object store: endpoint (VIDEOGEN_S3_ENDPOINT; for AWS https://s3.<region>.amazonaws.com),
    public_endpoint (host in presigned URLs given to clients; null: endpoint), region, bucket, and
    credentials_secrets: stage => Secret in this namespace with VIDEOGEN_S3_ACCESS_KEY /
    VIDEOGEN_S3_SECRET_KEY (from the minio or s3-aws module). Every stage in local.s3_stages
    (names.gen.tf) must have one.
  EOT
  type = object({
    endpoint            = string
    public_endpoint     = optional(string)
    region              = string
    bucket              = string
    credentials_secrets = map(string)
  })

  validation {
    condition     = alltrue([for s in local.s3_stages : contains(keys(var.s3.credentials_secrets), s)])
    error_message = "s3.credentials_secrets needs a secret for every stage in local.s3_stages (names.gen.tf)."
  }
}

variable "s3_network" {
  description = <<-EOT
    Egress the NetworkPolicy opens to the object store: namespace + port for an in-cluster MinIO,
    or cidrs + port for an external S3 endpoint (AWS: 0.0.0.0/0 on 443, or your VPC endpoint's CIDRs).
  EOT
  type = object({
    namespace = optional(string)
    cidrs     = optional(list(string), [])
    port      = number
  })
}

variable "webhook_secret" {
  description = <<-EOT
    Existing Secret (created out of band: it is shared with the webhook receivers) holding the
    Standard Webhooks signing secret(s) `whsec_...` (space separated during rotation).
  EOT
  type = object({
    name = string
    key  = optional(string, "VIDEOGEN_WEBHOOK_SECRET")
  })
}

variable "webhook_allow_hosts" {
  description = "Hosts/CIDRs webhooks may target despite the SSRF guard (VIDEOGEN_WEBHOOK_ALLOW_HOSTS). Keep empty in production."
  type        = list(string)
  default     = []
}

variable "input_allow_hosts" {
  description = "SSRF allow-list for https:// inputs (VIDEOGEN_INPUT_ALLOW_HOSTS)."
  type        = list(string)
  default     = []
}

variable "log_level" {
  description = "VIDEOGEN_LOG_LEVEL."
  type        = string
  default     = "INFO"
}

# ---- CPU functions ----------------------------------------------------------------------------
variable "functions" {
  description = <<-EOT
    Per-function overrides of the defaults in locals.tf (replicas, KEDA thresholds, resources,
    scratch space, termination grace). Keys: the stages of runtime/service.py (names.gen.tf).
  EOT
  type = map(object({
    min_replicas             = optional(number)
    max_replicas             = optional(number)
    lag_threshold            = optional(number)
    activation_lag_threshold = optional(number)
    cpu_request              = optional(string)
    memory_request           = optional(string)
    cpu_limit                = optional(string)
    memory_limit             = optional(string)
    tmp_size                 = optional(string)
    termination_grace_s      = optional(number)
  }))
  default = {}

  validation {
    condition     = alltrue([for k in keys(var.functions) : contains(concat(keys(local.function_consumers), keys(local.periodic_functions)), k)])
    error_message = "functions keys must be stage names from runtime/service.py (names.gen.tf)."
  }
}

variable "cpu_node_selector" {
  description = "Node selector for the CPU functions (keep them off GPU nodes)."
  type        = map(string)
  default     = {}
}

variable "cpu_tolerations" {
  description = "Tolerations for the CPU functions."
  type = list(object({
    key      = string
    operator = optional(string, "Equal")
    value    = optional(string)
    effect   = optional(string)
  }))
  default = []
}

# ---- GPU runners ------------------------------------------------------------------------------
variable "runners" {
  description = <<-EOT
    One Deployment of `videogen runner` (torchrun, nproc_per_node = gpus_per_pod) per entry; the key
    names the Deployment. Several entries may serve the same model (e.g. two GPU types, or a canary):
    they share that model's durable consumer. gpus_per_pod = 0 runs on CPU (tiny models only).
    lag_threshold is pending segments per replica (KEDA target); min_replicas = 0 scales to zero.
    termination_grace_s must cover one denoising step plus encode/upload (see infra/README.md).
    max_window_frames: the longest window this pool's GPU renders (VIDEOGEN_RUNNER_MAX_WINDOW_FRAMES);
    for a pool with less memory than the planner's budget: longer segments are re-planned, not run.
  EOT
  type = map(object({
    model                    = string
    gpus_per_pod             = number
    gpu_resource             = optional(string, "nvidia.com/gpu")
    node_selector            = optional(map(string), {})
    tolerations = optional(list(object({
      key      = string
      operator = optional(string, "Equal")
      value    = optional(string)
      effect   = optional(string)
    })), [{ key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule" }])
    min_replicas             = optional(number, 0)
    max_replicas             = optional(number, 4)
    lag_threshold            = optional(number, 1)
    activation_lag_threshold = optional(number, 0)
    cpu_request              = optional(string, "8")
    memory_request           = optional(string, "64Gi")
    cpu_limit                = optional(string, "16")
    memory_limit             = optional(string, "96Gi")
    shm_size                 = optional(string, "16Gi")
    tmp_size                 = optional(string, "50Gi")
    termination_grace_s      = optional(number, 300)
    startup_timeout_s        = optional(number, 1800)
    max_surge                = optional(string, "1")
    max_unavailable          = optional(string, "0")
    revision                 = optional(string)
    max_window_frames        = optional(number)
  }))

  validation {
    condition     = alltrue([for k in keys(var.runners) : can(regex("^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$", k))])
    error_message = "runner keys become resource names: lowercase letters, digits and '-', at most 40 characters."
  }
  validation {
    condition     = alltrue([for r in values(var.runners) : contains(keys(local.runner_consumers), r.model)])
    error_message = "runners[*].model must be a model name from schemas/registry.py."
  }
  validation {
    condition     = alltrue([for r in values(var.runners) : contains([0, 1, 2, 4, 8], r.gpus_per_pod)])
    error_message = "gpus_per_pod must be 0 (CPU), 1, 2, 4 or 8 (sequence parallelism splits attention heads evenly)."
  }
  validation {
    condition     = alltrue([for r in values(var.runners) : r.gpus_per_pod > 0 || try(local.models[r.model].tiny, false)])
    error_message = "Only tiny models may run without a GPU (gpus_per_pod = 0)."
  }
  validation {
    # gpu_runner.oom.default_min_frames: the shortest window a job is re-planned to (4 latent frames + 1)
    condition     = alltrue([for r in values(var.runners) : r.max_window_frames == null || try(r.max_window_frames >= 17, false)])
    error_message = "max_window_frames must be unset or at least 17 (the shortest window a segment is re-planned to)."
  }
  validation {
    condition     = alltrue([for r in values(var.runners) : r.min_replicas >= 0 && r.max_replicas >= max(1, r.min_replicas)])
    error_message = "Need 0 <= min_replicas <= max_replicas and max_replicas >= 1."
  }
  validation {
    condition     = alltrue([for r in values(var.runners) : r.termination_grace_s >= 60])
    error_message = "termination_grace_s below 60 s cannot finish a denoising step and an upload."
  }
}

variable "gpu_priority_class" {
  description = "PriorityClass for runner pods (null: none)."
  type        = string
  default     = null
}

variable "model_cache" {
  description = <<-EOT
    Volume with diffusers checkpoints at <mount>/<model>/ (VIDEOGEN_MODELS_DIR), mounted read-only by
    runners. Either existing_claim (a PVC you manage) or a new PVC (storage_class, size, access_mode:
    ReadWriteMany so runners on many nodes share it). download = true runs one Job per served model
    that fetches its hub_id (a pinned `revision` is recommended) and writes a .complete marker the
    runners' init container waits for. hf_token_secret: Secret with key HF_TOKEN (gated repos).
  EOT
  type = object({
    existing_claim  = optional(string)
    storage_class   = optional(string)
    size            = optional(string, "500Gi")
    access_mode     = optional(string, "ReadWriteMany")
    download        = optional(bool, true)
    hf_token_secret = optional(string)
  })
  default = {}
}

# ---- autoscaling, network, observability ------------------------------------------------------
variable "keda" {
  description = "KEDA ScaledObject timing: polling interval, cooldown before scaling to zero, scale-down stabilization."
  type = object({
    polling_interval_s             = optional(number, 10)
    function_cooldown_s            = optional(number, 300)
    runner_cooldown_s              = optional(number, 900)
    function_scale_down_window_s   = optional(number, 120)
    runner_scale_down_window_s     = optional(number, 600)
    fallback_replicas_on_error     = optional(number, 1)
  })
  default = {}
}

variable "metrics_namespaces" {
  description = "Namespaces allowed to scrape /metrics on port 9090 (Prometheus)."
  type        = list(string)
  default     = ["monitoring"]
}

variable "dns" {
  description = "Where cluster DNS runs (egress to it is allowed)."
  type = object({
    namespace = optional(string, "kube-system")
    labels    = optional(map(string), { "k8s-app" = "kube-dns" })
  })
  default = {}
}
