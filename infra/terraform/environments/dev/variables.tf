variable "kubeconfig" {
  description = "Path of the kubeconfig file."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "kubeconfig context of the dev cluster."
  type        = string
}

variable "nats_admin_url" {
  description = "NATS URL reachable from where terraform runs, for the jetstream provider."
  type        = string
  default     = "nats://127.0.0.1:4222"
}

variable "image" {
  description = "videogen image, pinned (tag or digest)."
  type        = string
}

variable "webhook_secret_name" {
  description = "Name of an existing Secret in the videogen namespace with key VIDEOGEN_WEBHOOK_SECRET (whsec_...)."
  type        = string
  default     = "videogen-webhook"
}

variable "s3_public_endpoint" {
  description = "URL clients use to download outputs (presigned URLs); null: the in-cluster endpoint."
  type        = string
  default     = null
}

variable "storage_class" {
  description = "StorageClass for NATS, MinIO and the model cache (null: cluster default)."
  type        = string
  default     = null
}

variable "model_cache_storage_class" {
  description = "ReadWriteMany StorageClass for the model cache (NFS, CephFS, EFS, Filestore...)."
  type        = string
  default     = null
}

variable "runners" {
  description = "GPU runners (see modules/videogen var.runners). Default: tiny-wan on CPU, for a smoke test without GPUs."
  type        = any
  default = {
    "tiny-wan-cpu" = {
      model          = "tiny-wan"
      gpus_per_pod   = 0
      min_replicas   = 0
      max_replicas   = 2
      cpu_request    = "1"
      memory_request = "2Gi"
      cpu_limit      = "2"
      memory_limit   = "4Gi"
      shm_size       = "1Gi"
      tmp_size       = "5Gi"
    }
  }
}

variable "videogen_tenants" {
  description = "Tenants (NATS accounts): the `videogen_tenants` value `videogen tenants add NAME` prints."
  type        = map(object({ nats_password = string, webhook_secrets = optional(string) }))
  default     = {}
  sensitive   = true
}

variable "nats_tls" {
  description = "TLS on the NATS client port (modules/nats var.tls): enabled, secret_name, issuer_name (cert-manager)."
  type = object({
    enabled        = bool
    secret_name    = optional(string, "nats-tls")
    issuer_name    = optional(string)
    issuer_kind    = optional(string, "ClusterIssuer")
    verify_clients = optional(bool, false)
  })
  default = { enabled = false }
}
