variable "namespace" {
  description = "Namespace NATS runs in (created by the caller)."
  type        = string
}

variable "release_name" {
  description = "Helm release name; also the StatefulSet/Service name (fullnameOverride)."
  type        = string
  default     = "nats"
}

variable "chart_version" {
  description = "Version of the official nats-io Helm chart (https://nats-io.github.io/k8s/helm/charts/)."
  type        = string
  default     = "2.14.2"
}

variable "replicas" {
  description = "NATS servers in the JetStream cluster. 3 tolerates one failure with R3 streams."
  type        = number
  default     = 3

  validation {
    condition     = var.replicas >= 3 && var.replicas % 2 == 1
    error_message = "JetStream needs a RAFT quorum: use an odd number of servers, at least 3."
  }
}

variable "storage_class" {
  description = "StorageClass of the JetStream file-store PVCs (SSD-backed; null: the cluster default)."
  type        = string
  default     = null
}

variable "storage_size" {
  description = "Size of each server's JetStream file-store PVC; also its max_file_store."
  type        = string
  default     = "20Gi"
}

variable "resources" {
  description = "Requests/limits of the nats-server container."
  type = object({
    requests = map(string)
    limits   = map(string)
  })
  default = {
    requests = { cpu = "500m", memory = "1Gi" }
    limits   = { cpu = "2", memory = "2Gi" }
  }
}

variable "gomemlimit" {
  description = "GOMEMLIMIT for nats-server, about 90% of the memory limit."
  type        = string
  default     = "1800MiB"
}

variable "client_namespaces" {
  description = "Namespaces whose pods may connect to NATS clients port 4222 (the videogen workloads, tooling)."
  type        = list(string)
}

variable "monitoring_namespaces" {
  description = "Namespaces allowed to read the monitoring port 8222 (KEDA's nats-jetstream scaler, Prometheus)."
  type        = list(string)
  default     = ["keda"]
}

variable "app_namespace" {
  description = "Namespace of the videogen workloads: the app's NATS credentials secret is written there."
  type        = string
}

variable "app_user" {
  description = "NATS user the videogen workloads connect as."
  type        = string
  default     = "videogen"
}

variable "node_selector" {
  description = "Node selector for the NATS pods."
  type        = map(string)
  default     = {}
}

variable "tolerations" {
  description = "Tolerations for the NATS pods."
  type = list(object({
    key      = string
    operator = optional(string, "Equal")
    value    = optional(string)
    effect   = optional(string)
  }))
  default = []
}

variable "nats_box" {
  description = "Deploy the nats-box toolbox pod (for operators: `kubectl exec -it deploy/nats-box -- nats ...`)."
  type        = bool
  default     = false
}

variable "pod_monitor" {
  description = "Create a Prometheus-operator PodMonitor and the prometheus-nats-exporter sidecar."
  type        = bool
  default     = false
}

variable "tenants" {
  description = <<-EOT
    Tenant accounts (issue 13): name => { nats_password }. `videogen tenants add NAME` prints the
    entry (its `videogen_tenants` value). Each becomes a NATS account that publishes
    videogen.jobs.submit/cancel and reads only its own events and status (runtime/accounts.py).
  EOT
  type      = map(object({ nats_password = string }))
  default   = {}
  sensitive = true

  validation {
    condition     = alltrue([for t in keys(var.tenants) : can(regex("^[a-z][a-z0-9-]{0,30}$", t)) && !contains(["default", "service", "sys", "operator", "t"], t)])
    error_message = "Tenant names are [a-z][a-z0-9-]{0,30} and not default/service/sys/operator/t (schemas/names.py)."
  }
}

variable "tls" {
  description = <<-EOT
    TLS on the NATS client port. enabled: serve TLS from the Secret secret_name (tls.crt/tls.key);
    issuer_name: a cert-manager (Cluster)Issuer that issues it (null: the operator provides the Secret);
    verify_clients: require client certificates (mTLS). Clients: VIDEOGEN_NATS_TLS_CA = the CA bundle.
  EOT
  type = object({
    enabled        = bool
    secret_name    = optional(string, "nats-tls")
    issuer_name    = optional(string)
    issuer_kind    = optional(string, "ClusterIssuer")
    verify_clients = optional(bool, false)
  })
  default = { enabled = false }
}
