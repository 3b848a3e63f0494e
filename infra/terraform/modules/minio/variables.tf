variable "namespace" {
  description = "Namespace MinIO runs in (created by the caller)."
  type        = string
}

variable "app_namespace" {
  description = "Namespace of the videogen workloads: per-stage credential Secrets are written there."
  type        = string
}

variable "bucket" {
  description = "Bucket for job inputs, intermediate frames/segments and outputs."
  type        = string
  default     = "videogen"
}

variable "expire_days" {
  description = "Lifecycle rule: objects under jobs/ expire after this many days."
  type        = number
  default     = 7

  validation {
    condition     = var.expire_days >= 1
    error_message = "expire_days must be at least 1."
  }
}

variable "replicas" {
  description = "MinIO servers. 1: single drive (dev). 4 or more: distributed erasure coding (production)."
  type        = number
  default     = 4

  validation {
    condition     = var.replicas == 1 || var.replicas >= 4
    error_message = "Use 1 (dev) or at least 4 servers (erasure coding needs >= 4 drives)."
  }
}

variable "image" {
  description = "MinIO server image, pinned."
  type        = string
  default     = "quay.io/minio/minio:RELEASE.2025-09-07T16-13-09Z"
}

variable "mc_image" {
  description = "MinIO client image (mc) for the init Job, pinned."
  type        = string
  default     = "quay.io/minio/mc:RELEASE.2025-08-13T08-35-41Z"
}

variable "storage_class" {
  description = "StorageClass of the data PVCs (null: cluster default)."
  type        = string
  default     = null
}

variable "volume_size" {
  description = "Size of each server's data PVC."
  type        = string
  default     = "500Gi"
}

variable "resources" {
  description = "Requests/limits of each MinIO server."
  type = object({
    requests = map(string)
    limits   = map(string)
  })
  default = {
    requests = { cpu = "1", memory = "4Gi" }
    limits   = { cpu = "4", memory = "8Gi" }
  }
}

variable "client_namespaces" {
  description = "Namespaces allowed to reach the S3 API (port 9000): the videogen workloads, an ingress controller for presigned URLs."
  type        = list(string)
}

variable "node_selector" {
  description = "Node selector for the MinIO pods."
  type        = map(string)
  default     = {}
}
