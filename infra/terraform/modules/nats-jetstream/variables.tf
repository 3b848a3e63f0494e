variable "replicas" {
  description = "Replicas of every stream and of the KV bucket (R3 on a 3-server cluster survives one server loss)."
  type        = number
  default     = 3

  validation {
    condition     = contains([1, 3, 5], var.replicas)
    error_message = "Use R1 (single server, dev only), R3 or R5."
  }
}

variable "models" {
  description = "Registry models (schemas/registry.py) served by GPU runners: one durable runner consumer each."
  type        = list(string)

  validation {
    condition     = alltrue([for m in var.models : contains(keys(local.runner_consumers), m)])
    error_message = "Every model must be a name from schemas/registry.py (see local.runner_consumers in jetstream.gen.tf)."
  }

  validation {
    condition     = length(var.models) == length(distinct(var.models))
    error_message = "models must not repeat."
  }
}
