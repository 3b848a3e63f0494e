# videogen in production: NATS JetStream (3 servers, R3 streams), AWS S3 with per-stage IAM
# users, KEDA, every function, and H100 runners per model (sizing: infra/README.md).

locals {
  app_ns  = "videogen"
  nats_ns = "nats"
  keda_ns = "keda"

  cpu_nodes = { "node-role.videogen.io/cpu" = "true" }

  runners = {
    # 720p x 81 frames, Ulysses sequence parallel over 8 GPUs: ~5 s/step, a 50-step segment in ~4.7 min
    "wan21-t2v-14b-h100x8" = {
      model               = "wan2.1-t2v-14b"
      gpus_per_pod        = 8
      node_selector       = var.gpu_node_selector
      min_replicas        = 1 # keep 14B weights warm: a cold start costs minutes
      max_replicas        = 4
      cpu_request         = "48"
      memory_request      = "480Gi"
      cpu_limit           = "96"
      memory_limit        = "720Gi"
      shm_size            = "64Gi"
      tmp_size            = "100Gi"
      termination_grace_s = 300
      startup_timeout_s   = 2400
      revision            = lookup(var.model_revisions, "wan2.1-t2v-14b", null)
    }
    # 480p x 81 frames on one GPU: ~1.5 s/step
    "wan21-t2v-1-3b-h100" = {
      model               = "wan2.1-t2v-1.3b"
      gpus_per_pod        = 1
      node_selector       = var.gpu_node_selector
      min_replicas        = 0
      max_replicas        = 8
      cpu_request         = "8"
      memory_request      = "64Gi"
      cpu_limit           = "16"
      memory_limit        = "96Gi"
      shm_size            = "16Gi"
      termination_grace_s = 120
      revision            = lookup(var.model_revisions, "wan2.1-t2v-1.3b", null)
    }
    # 1280x704 x 121 frames on one GPU: ~2.6 s/step
    "wan22-ti2v-5b-h100" = {
      model               = "wan2.2-ti2v-5b"
      gpus_per_pod        = 1
      node_selector       = var.gpu_node_selector
      min_replicas        = 0
      max_replicas        = 8
      cpu_request         = "8"
      memory_request      = "96Gi"
      cpu_limit           = "16"
      memory_limit        = "128Gi"
      shm_size            = "16Gi"
      termination_grace_s = 180
      revision            = lookup(var.model_revisions, "wan2.2-ti2v-5b", null)
    }
  }
  served_models = distinct([for r in values(local.runners) : r.model])
}

resource "kubernetes_namespace_v1" "ns" {
  for_each = {
    (local.app_ns)  = "restricted"
    (local.nats_ns) = "restricted"
    (local.keda_ns) = "baseline"
  }
  metadata {
    name = each.key
    labels = {
      "app.kubernetes.io/part-of"          = "videogen"
      "pod-security.kubernetes.io/enforce" = each.value
      "pod-security.kubernetes.io/warn"    = "restricted"
    }
  }
}

module "keda" {
  source        = "../../modules/keda"
  namespace     = kubernetes_namespace_v1.ns[local.keda_ns].metadata[0].name
  node_selector = local.cpu_nodes
}

module "nats" {
  source                = "../../modules/nats"
  tenants               = var.videogen_tenants
  tls                   = var.nats_tls
  namespace             = kubernetes_namespace_v1.ns[local.nats_ns].metadata[0].name
  app_namespace         = kubernetes_namespace_v1.ns[local.app_ns].metadata[0].name
  client_namespaces     = [local.app_ns]
  monitoring_namespaces = [local.keda_ns, "monitoring"]
  replicas              = 3
  storage_class         = var.storage_class
  storage_size          = "100Gi"
  node_selector         = local.cpu_nodes
  pod_monitor           = true
  resources = {
    requests = { cpu = "2", memory = "4Gi" }
    limits   = { cpu = "4", memory = "4Gi" }
  }
  gomemlimit = "3600MiB"
}

module "jetstream" {
  source   = "../../modules/nats-jetstream"
  replicas = 3
  models   = local.served_models

  depends_on = [module.nats]
}

module "s3" {
  source            = "../../modules/s3-aws"
  bucket            = var.bucket
  access_log_bucket = var.access_log_bucket
  app_namespace     = kubernetes_namespace_v1.ns[local.app_ns].metadata[0].name
  expire_days       = 7
}

module "videogen" {
  source    = "../../modules/videogen"
  namespace = kubernetes_namespace_v1.ns[local.app_ns].metadata[0].name
  image     = var.image

  nats = {
    url                 = module.nats.client_url
    credentials_secret  = module.nats.app_credentials_secret
    stage_credentials_secrets = module.nats.stage_credentials_secrets
    namespace           = local.nats_ns
    monitoring_endpoint = module.nats.monitoring_endpoint
    account             = module.nats.account
  }
  s3 = {
    endpoint            = module.s3.endpoint
    region              = module.s3.region
    bucket              = module.s3.bucket
    credentials_secrets = module.s3.credentials_secrets
  }
  s3_network     = module.s3.network
  webhook_secret = { name = var.webhook_secret_name }

  functions = {
    # keep one of each warm: a cold function start adds seconds to every stage of a job
    preprocess = { min_replicas = 1, max_replicas = 20 }
    planner    = { min_replicas = 1 }
    chain      = { min_replicas = 1 }
    stitch     = { min_replicas = 1, max_replicas = 10 }
    webhook    = { min_replicas = 1 }
    cancel     = { min_replicas = 1 } # a cancel should stop GPU work within seconds
  }
  cpu_node_selector = local.cpu_nodes

  runners = local.runners
  model_cache = {
    storage_class = var.model_cache_storage_class
    size          = "1Ti"
  }

  depends_on = [module.keda, module.jetstream]
}
