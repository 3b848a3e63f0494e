# videogen on a dev cluster: 3-node NATS JetStream, single-server MinIO, KEDA, every function,
# and a CPU runner for the tiny model (add GPU runners through var.runners).

locals {
  app_ns   = "videogen"
  nats_ns  = "nats"
  minio_ns = "minio"
  keda_ns  = "keda"
  # every model some runner serves gets its durable consumer
  served_models = distinct([for r in values(var.runners) : r.model])
}

resource "kubernetes_namespace_v1" "ns" {
  for_each = {
    (local.app_ns)   = "restricted"
    (local.nats_ns)  = "restricted"
    (local.minio_ns) = "restricted"
    (local.keda_ns)  = "baseline"
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
  source    = "../../modules/keda"
  namespace = kubernetes_namespace_v1.ns[local.keda_ns].metadata[0].name
}

module "nats" {
  source                = "../../modules/nats"
  tenants               = var.videogen_tenants
  tls                   = var.nats_tls
  namespace             = kubernetes_namespace_v1.ns[local.nats_ns].metadata[0].name
  app_namespace         = kubernetes_namespace_v1.ns[local.app_ns].metadata[0].name
  client_namespaces     = [local.app_ns]
  monitoring_namespaces = [local.keda_ns]
  replicas              = 3
  storage_class         = var.storage_class
  storage_size          = "5Gi"
  nats_box              = true
}

module "jetstream" {
  source   = "../../modules/nats-jetstream"
  replicas = 3
  models   = local.served_models

  depends_on = [module.nats]
}

module "minio" {
  source            = "../../modules/minio"
  namespace         = kubernetes_namespace_v1.ns[local.minio_ns].metadata[0].name
  app_namespace     = kubernetes_namespace_v1.ns[local.app_ns].metadata[0].name
  client_namespaces = [local.app_ns]
  replicas          = 1
  volume_size       = "50Gi"
  storage_class     = var.storage_class
  resources = {
    requests = { cpu = "250m", memory = "512Mi" }
    limits   = { cpu = "1", memory = "1Gi" }
  }
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
    endpoint            = module.minio.endpoint
    public_endpoint     = var.s3_public_endpoint
    region              = module.minio.region
    bucket              = module.minio.bucket
    credentials_secrets = module.minio.credentials_secrets
  }
  s3_network     = module.minio.network
  webhook_secret = { name = var.webhook_secret_name }

  # small scale, fast scale-in
  functions = {
    preprocess = { max_replicas = 2, cpu_request = "250m", memory_request = "1Gi" }
    stitch     = { max_replicas = 2, cpu_request = "250m", memory_request = "512Mi" }
  }
  keda = {
    function_cooldown_s = 60
    runner_cooldown_s   = 120
  }

  runners = var.runners
  model_cache = {
    storage_class = var.model_cache_storage_class
    size          = "50Gi"
  }
  metrics_namespaces = []

  depends_on = [module.keda, module.jetstream]
}
