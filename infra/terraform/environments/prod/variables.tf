variable "aws_region" {
  description = "AWS region of the bucket (and usually of the cluster)."
  type        = string
}

variable "kubeconfig" {
  description = "Path of the kubeconfig file."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "kubeconfig context of the production cluster."
  type        = string
}

variable "nats_admin_url" {
  description = "NATS URL reachable from where terraform runs, for the jetstream provider."
  type        = string
  default     = "nats://127.0.0.1:4222"
}

variable "image" {
  description = "videogen image pinned by digest: ghcr.io/videogen/videogen@sha256:..."
  type        = string

  validation {
    condition     = can(regex("@sha256:[0-9a-f]{64}$", var.image))
    error_message = "Production pins the image by digest."
  }
}

variable "bucket" {
  description = "Globally unique bucket name."
  type        = string
}

variable "access_log_bucket" {
  description = "Existing bucket for S3 server access logs."
  type        = string
}

variable "webhook_secret_name" {
  description = "Existing Secret in the videogen namespace with key VIDEOGEN_WEBHOOK_SECRET (whsec_...), from your secret manager."
  type        = string
  default     = "videogen-webhook"
}

variable "storage_class" {
  description = "SSD StorageClass for the NATS JetStream PVCs."
  type        = string
  default     = "gp3"
}

variable "model_cache_storage_class" {
  description = "ReadWriteMany StorageClass for the model cache (e.g. EFS)."
  type        = string
  default     = "efs-sc"
}

variable "gpu_node_selector" {
  description = "Node labels of the H100 node group."
  type        = map(string)
  default     = { "nvidia.com/gpu.product" = "NVIDIA-H100-80GB-HBM3" }
}

variable "model_revisions" {
  description = "Pinned hub revision (commit) per model; unset: the repository's main branch at fetch time."
  type        = map(string)
  default     = {}
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
  default = { enabled = true, issuer_name = "videogen-ca" } # a cert-manager ClusterIssuer the operator provides
}
