variable "bucket" {
  description = "Bucket name (globally unique on AWS: e.g. videogen-<account>-<region>)."
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

variable "app_namespace" {
  description = "Namespace of the videogen workloads: per-stage credential Secrets are written there."
  type        = string
}

variable "access_log_bucket" {
  description = "Existing bucket that receives S3 server access logs for the videogen bucket."
  type        = string
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the bucket's KMS key is deleted after destroy."
  type        = number
  default     = 30
}

variable "iam_path" {
  description = "Path of the IAM users and groups."
  type        = string
  default     = "/videogen/"
}

variable "tags" {
  description = "Tags on every AWS resource."
  type        = map(string)
  default     = {}
}
