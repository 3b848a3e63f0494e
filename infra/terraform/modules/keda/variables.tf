variable "namespace" {
  description = "Namespace for the KEDA operator (created by the caller). The NATS NetworkPolicy must admit it on port 8222."
  type        = string
  default     = "keda"
}

variable "chart_version" {
  description = "Version of the kedacore/keda Helm chart (>= 2.8 has the nats-jetstream scaler)."
  type        = string
  default     = "2.20.2"
}

variable "node_selector" {
  description = "Node selector for the KEDA pods."
  type        = map(string)
  default     = {}
}
