locals {
  health_port  = 9090
  models_mount = "/models"

  labels = {
    "app.kubernetes.io/part-of"    = "videogen"
    "app.kubernetes.io/managed-by" = "terraform"
  }

  # Every stage of runtime/service.py is one Deployment (`videogen functions <stage>`). Consumer
  # stages scale with KEDA on their consumer's lag; periodic stages (a timer, no consumer) run one
  # replica. Both tables come from names.gen.tf.
  stages = merge(
    { for name, c in local.function_consumers : name => merge(c, { scaled = true }) },
    {
      for name, p in local.periodic_functions : name => {
        stream = null, consumer = null, ack_wait_s = 30, internet_egress = p.internet_egress, scaled = false
      }
    },
  )

  # Sizing per stage; var.functions overrides any field. Termination grace covers the consumer's
  # ack_wait (from schemas, via names.gen.tf) plus a margin: a stage that is stopped finishes or
  # naks its current message before the broker would redeliver it anyway.
  function_defaults = {
    preprocess       = { max_replicas = 20, lag_threshold = 5, cpu_request = "1", memory_request = "2Gi", cpu_limit = "2", memory_limit = "4Gi", tmp_size = "10Gi" }
    planner          = { max_replicas = 5, lag_threshold = 20, cpu_request = "100m", memory_request = "384Mi", cpu_limit = "500m", memory_limit = "768Mi", tmp_size = "1Gi" }
    chain            = { max_replicas = 5, lag_threshold = 20, cpu_request = "100m", memory_request = "384Mi", cpu_limit = "500m", memory_limit = "768Mi", tmp_size = "1Gi" }
    stitch           = { max_replicas = 10, lag_threshold = 2, cpu_request = "1", memory_request = "1Gi", cpu_limit = "2", memory_limit = "2Gi", tmp_size = "20Gi" }
    webhook          = { max_replicas = 10, lag_threshold = 50, cpu_request = "100m", memory_request = "384Mi", cpu_limit = "500m", memory_limit = "768Mi", tmp_size = "1Gi" }
    "webhook-replay" = { max_replicas = 3, lag_threshold = 50, cpu_request = "100m", memory_request = "384Mi", cpu_limit = "500m", memory_limit = "768Mi", tmp_size = "1Gi" }
    cancel           = { max_replicas = 3, lag_threshold = 20, cpu_request = "100m", memory_request = "384Mi", cpu_limit = "500m", memory_limit = "768Mi", tmp_size = "1Gi" }
    queue            = { max_replicas = 1, lag_threshold = 1, cpu_request = "100m", memory_request = "256Mi", cpu_limit = "500m", memory_limit = "512Mi", tmp_size = "1Gi" }
    sweeper          = { max_replicas = 2, lag_threshold = 20, cpu_request = "100m", memory_request = "256Mi", cpu_limit = "500m", memory_limit = "512Mi", tmp_size = "1Gi" }
  }
  # a stage added to runtime/service.py later gets these until it has its own line above
  generic_function = { max_replicas = 5, lag_threshold = 10, cpu_request = "250m", memory_request = "512Mi", cpu_limit = "1", memory_limit = "1Gi", tmp_size = "1Gi" }
  function_sizing  = { for name in keys(local.stages) : name => lookup(local.function_defaults, name, local.generic_function) }

  functions = {
    for name, c in local.stages : name => {
      stream                   = c.stream
      consumer                 = c.consumer
      scaled                   = c.scaled
      min_replicas             = c.scaled ? coalesce(try(var.functions[name].min_replicas, null), 0) : 1
      max_replicas             = c.scaled ? coalesce(try(var.functions[name].max_replicas, null), local.function_sizing[name].max_replicas) : 1
      lag_threshold            = coalesce(try(var.functions[name].lag_threshold, null), local.function_sizing[name].lag_threshold)
      activation_lag_threshold = coalesce(try(var.functions[name].activation_lag_threshold, null), 0)
      cpu_request              = coalesce(try(var.functions[name].cpu_request, null), local.function_sizing[name].cpu_request)
      memory_request           = coalesce(try(var.functions[name].memory_request, null), local.function_sizing[name].memory_request)
      cpu_limit                = coalesce(try(var.functions[name].cpu_limit, null), local.function_sizing[name].cpu_limit)
      memory_limit             = coalesce(try(var.functions[name].memory_limit, null), local.function_sizing[name].memory_limit)
      tmp_size                 = coalesce(try(var.functions[name].tmp_size, null), local.function_sizing[name].tmp_size)
      termination_grace_s      = coalesce(try(var.functions[name].termination_grace_s, null), max(60, c.ack_wait_s + 30))
      # only stages with S3 access (names.gen.tf s3_stages) get a credential
      s3_secret = contains(local.s3_stages, name) ? var.s3.credentials_secrets[name] : null
      # preprocess fetches https:// inputs, webhook POSTs to client endpoints (stage_access.py)
      internet_egress = c.internet_egress
    }
  }

  runners = {
    for key, r in var.runners : key => merge(r, {
      consumer = local.runner_consumers[r.model].consumer
      stream   = local.runner_consumers[r.model].stream
      nproc    = max(1, r.gpus_per_pod)
      device   = r.gpus_per_pod > 0 ? "cuda" : "cpu"
      hub_id   = local.models[r.model].hub_id
      tiny     = local.models[r.model].tiny
    })
  }

  served_models = distinct([for r in values(var.runners) : r.model])

  # checkpoints fetched into the cache (tiny models are built in-process, they have no hub_id)
  fetched_models = {
    for m in local.served_models : m => {
      hub_id   = local.models[m].hub_id
      revision = try([for r in values(var.runners) : r.revision if r.model == m && r.revision != null][0], null)
    } if var.model_cache.download && local.models[m].hub_id != ""
  }

  model_cache_claim = coalesce(var.model_cache.existing_claim, "videogen-models")
  needs_model_cache = anytrue([for r in values(var.runners) : !local.models[r.model].tiny])

  # kubernetes names: "wan2.1-t2v-14b" -> "wan2-1-t2v-14b"
  k8s_model = { for m in keys(local.models) : m => replace(m, ".", "-") }

  common_env = merge(
    {
      VIDEOGEN_EMBEDDED            = "false"
      VIDEOGEN_NATS_URL            = var.nats.url
      VIDEOGEN_S3_ENDPOINT         = var.s3.endpoint
      VIDEOGEN_S3_REGION           = var.s3.region
      VIDEOGEN_BUCKET              = var.s3.bucket
      VIDEOGEN_LOG_LEVEL           = var.log_level
      VIDEOGEN_LOG_FORMAT          = "json"
      VIDEOGEN_HEALTH_PORT         = tostring(local.health_port)
      VIDEOGEN_MODELS_DIR          = local.models_mount
      VIDEOGEN_DATA_DIR            = "/tmp/videogen"
      VIDEOGEN_WEBHOOK_ALLOW_HOSTS = jsonencode(var.webhook_allow_hosts)
      VIDEOGEN_INPUT_ALLOW_HOSTS   = jsonencode(var.input_allow_hosts)
      # read-only root filesystem: every cache goes to the /tmp emptyDir
      HOME                    = "/tmp"
      XDG_CACHE_HOME          = "/tmp/.cache"
      HF_HOME                 = "/tmp/.cache/huggingface"
      HF_HUB_OFFLINE          = "1" # runners load checkpoints from the model cache only
      TRITON_CACHE_DIR        = "/tmp/.cache/triton"
      TORCHINDUCTOR_CACHE_DIR = "/tmp/.cache/inductor"
      MPLCONFIGDIR            = "/tmp/.cache/matplotlib"
      PYTHONDONTWRITEBYTECODE = "1"
      PYTHONUNBUFFERED        = "1"
    },
    var.s3.public_endpoint == null ? {} : { VIDEOGEN_S3_PUBLIC_ENDPOINT = var.s3.public_endpoint },
  )

  pod_annotations = {
    "prometheus.io/scrape" = "true"
    "prometheus.io/port"   = tostring(local.health_port)
    "prometheus.io/path"   = "/metrics"
  }
}
