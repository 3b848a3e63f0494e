# The HTTP gateway (`videogen gateway`, gateway/): OpenAI-compatible /v1/videos and the web console.
# Stateless (every request reads NATS KV / S3), so it scales horizontally: an HPA on CPU, a
# Service, and an Ingress for the public host. Hand-written (not generated): it restates no name
# from schemas/ beyond the command line.
#
# S3: its own least-privilege user, the "gateway" entry of infra/tools/stage_access.py (the minio and
# s3-aws modules create it with the stages' users: var.s3.credentials_secrets["gateway"]): writes
# jobs/<id>/inputs/request.json (the same bytes preprocess stores), uploads/<id>/* (multipart input
# files), and thumbnail.jpg / spritesheet.jpg for jobs stitched before stitch made them; reads
# request.json, output.mp4 and the previews; deletes under jobs/<id>/ and uploads/<id>/ (DELETE
# /v1/videos/{id}); presigns GETs of output.mp4. var.gateway.s3_credentials_secret overrides the secret.
# NATS: the app user (var.nats.credentials_secret) with $KV.videogen-apikeys.> (modules/nats).

variable "gateway" {
  description = <<-EOT
    The HTTP gateway. enabled: deploy it. host: the Ingress host (null: no Ingress). tls_secret:
    TLS certificate Secret for the host (null: plain HTTP at the Ingress). ingress_class_name and
    ingress_namespace: the ingress controller (its namespace is allowed to reach the pods).
    s3_credentials_secret: Secret with VIDEOGEN_S3_ACCESS_KEY / VIDEOGEN_S3_SECRET_KEY for the
    gateway's S3 user (see the access list at the top of gateway.tf). min/max_replicas and
    target_cpu_percent: the HorizontalPodAutoscaler.
  EOT
  type = object({
    enabled               = optional(bool, false)
    host                  = optional(string)
    tls_secret            = optional(string)
    ingress_class_name    = optional(string, "nginx")
    ingress_namespace     = optional(string, "ingress-nginx")
    s3_credentials_secret = optional(string)
    min_replicas          = optional(number, 2)
    max_replicas          = optional(number, 10)
    target_cpu_percent    = optional(number, 70)
    cpu_request           = optional(string, "250m")
    memory_request        = optional(string, "384Mi")
    cpu_limit             = optional(string, "1")
    memory_limit          = optional(string, "1Gi")
  })
  default = {}

  validation {
    condition     = !var.gateway.enabled || var.gateway.s3_credentials_secret != null || contains(keys(var.s3.credentials_secrets), "gateway")
    error_message = "the gateway needs an S3 secret: s3.credentials_secrets[\"gateway\"] or gateway.s3_credentials_secret."
  }
  validation {
    condition     = var.gateway.min_replicas >= 1 && var.gateway.max_replicas >= var.gateway.min_replicas
    error_message = "gateway needs 1 <= min_replicas <= max_replicas."
  }
}

locals {
  gateway_port   = 8080
  gateway_labels = { "app.kubernetes.io/name" = "videogen-gateway" }
  gateway        = var.gateway.enabled ? { gateway = var.gateway } : {}
  gateway_ingress = {
    for k, g in local.gateway : k => g if g.host != null
  }
}

resource "kubernetes_service_account_v1" "gateway" {
  for_each = local.gateway

  metadata {
    name      = "videogen-gateway"
    namespace = var.namespace
    labels    = merge(local.labels, local.gateway_labels)
  }
  automount_service_account_token = false
}

resource "kubernetes_deployment_v1" "gateway" {
  #checkov:skip=CKV_K8S_14:The image is var.image, which the variable's validation rejects unless it carries an explicit version tag (never :latest) or a sha256 digest.
  #checkov:skip=CKV_K8S_43:Digest pinning is enforced in environments/prod (var.image must be @sha256:<digest>).
  #checkov:skip=CKV_K8S_15:Images are immutable (version tag or digest), so IfNotPresent is correct.
  #checkov:skip=CKV_K8S_35:runtime/settings.py reads configuration only from VIDEOGEN_* environment variables.
  for_each = local.gateway

  metadata {
    name      = "videogen-gateway"
    namespace = var.namespace
    labels    = merge(local.labels, local.gateway_labels, { "app.kubernetes.io/component" = "gateway" })
  }

  # the HPA owns the replica count
  lifecycle {
    ignore_changes = [spec[0].replicas]
  }

  spec {
    replicas               = each.value.min_replicas
    revision_history_limit = 5

    selector {
      match_labels = local.gateway_labels
    }

    strategy {
      type = "RollingUpdate"
      rolling_update {
        max_surge       = "25%"
        max_unavailable = "0"
      }
    }

    template {
      metadata {
        labels      = merge(local.labels, local.gateway_labels, { "app.kubernetes.io/component" = "gateway" })
        annotations = local.pod_annotations
      }

      spec {
        service_account_name             = kubernetes_service_account_v1.gateway[each.key].metadata[0].name
        automount_service_account_token  = false
        enable_service_links             = false
        termination_grace_period_seconds = 30
        node_selector                    = var.cpu_node_selector

        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          run_as_group    = 10001
          fs_group        = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        dynamic "toleration" {
          for_each = var.cpu_tolerations
          content {
            key      = toleration.value.key
            operator = toleration.value.operator
            value    = toleration.value.value
            effect   = toleration.value.effect
          }
        }

        dynamic "image_pull_secrets" {
          for_each = toset(var.image_pull_secrets)
          content {
            name = image_pull_secrets.value
          }
        }

        topology_spread_constraint {
          max_skew           = 1
          topology_key       = "kubernetes.io/hostname"
          when_unsatisfiable = "ScheduleAnyway"
          label_selector {
            match_labels = local.gateway_labels
          }
        }

        container {
          name              = "gateway"
          image             = var.image
          image_pull_policy = var.image_pull_policy
          command           = ["videogen"]
          args              = ["gateway", "--host", "0.0.0.0", "--port", tostring(local.gateway_port)]

          port {
            name           = "http"
            container_port = local.gateway_port
            protocol       = "TCP"
          }

          env_from {
            config_map_ref {
              name = kubernetes_config_map_v1.env.metadata[0].name
            }
          }

          env {
            name = "VIDEOGEN_NATS_USER"
            value_from {
              secret_key_ref {
                name = var.nats.credentials_secret
                key  = "VIDEOGEN_NATS_USER"
              }
            }
          }
          env {
            name = "VIDEOGEN_NATS_PASSWORD"
            value_from {
              secret_key_ref {
                name = var.nats.credentials_secret
                key  = "VIDEOGEN_NATS_PASSWORD"
              }
            }
          }
          dynamic "env" {
            for_each = ["VIDEOGEN_S3_ACCESS_KEY", "VIDEOGEN_S3_SECRET_KEY"]
            content {
              name = env.value
              value_from {
                secret_key_ref {
                  name = coalesce(each.value.s3_credentials_secret, var.s3.credentials_secrets["gateway"])
                  key  = env.value
                }
              }
            }
          }

          resources {
            requests = {
              cpu                 = each.value.cpu_request
              memory              = each.value.memory_request
              "ephemeral-storage" = "256Mi"
            }
            limits = {
              cpu                 = each.value.cpu_limit
              memory              = each.value.memory_limit
              "ephemeral-storage" = "2Gi"
            }
          }

          readiness_probe {
            http_get {
              path = "/readyz"
              port = "http"
            }
            period_seconds    = 5
            timeout_seconds   = 3
            failure_threshold = 3
          }

          liveness_probe {
            http_get {
              path = "/healthz"
              port = "http"
            }
            initial_delay_seconds = 10
            period_seconds        = 15
            timeout_seconds       = 5
            failure_threshold     = 4
          }

          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            run_as_non_root            = true
            run_as_user                = 10001
            capabilities {
              drop = ["ALL"]
            }
          }

          volume_mount {
            name       = "tmp"
            mount_path = "/tmp" # thumbnails/spritesheets decode the output through a temp file
          }
        }

        volume {
          name = "tmp"
          empty_dir {
            size_limit = "2Gi"
          }
        }
      }
    }
  }
}

resource "kubernetes_service_v1" "gateway" {
  for_each = local.gateway

  metadata {
    name      = "videogen-gateway"
    namespace = var.namespace
    labels    = merge(local.labels, local.gateway_labels)
  }
  spec {
    type     = "ClusterIP"
    selector = local.gateway_labels
    port {
      name        = "http"
      port        = 80
      target_port = "http"
      protocol    = "TCP"
    }
  }
}

resource "kubernetes_ingress_v1" "gateway" {
  for_each = local.gateway_ingress

  metadata {
    name      = "videogen-gateway"
    namespace = var.namespace
    labels    = merge(local.labels, local.gateway_labels)
    annotations = {
      # multipart uploads (input_reference, driving video) up to the gateway's own 256 MiB limit,
      # and long-lived SSE streams (GET /v1/videos/{id}/events) and `Prefer: wait=N` answers
      "nginx.ingress.kubernetes.io/proxy-body-size"    = "256m"
      "nginx.ingress.kubernetes.io/proxy-read-timeout" = "3600"
      "nginx.ingress.kubernetes.io/proxy-buffering"    = "off"
    }
  }
  spec {
    ingress_class_name = each.value.ingress_class_name
    dynamic "tls" {
      for_each = each.value.tls_secret == null ? [] : [each.value.tls_secret]
      content {
        hosts       = [each.value.host]
        secret_name = tls.value
      }
    }
    rule {
      host = each.value.host
      http {
        path {
          path      = "/"
          path_type = "Prefix"
          backend {
            service {
              name = kubernetes_service_v1.gateway[each.key].metadata[0].name
              port {
                name = "http"
              }
            }
          }
        }
      }
    }
  }
}

resource "kubernetes_horizontal_pod_autoscaler_v2" "gateway" {
  for_each = local.gateway

  metadata {
    name      = "videogen-gateway"
    namespace = var.namespace
    labels    = merge(local.labels, local.gateway_labels)
  }
  spec {
    min_replicas = each.value.min_replicas
    max_replicas = each.value.max_replicas
    scale_target_ref {
      api_version = "apps/v1"
      kind        = "Deployment"
      name        = kubernetes_deployment_v1.gateway[each.key].metadata[0].name
    }
    metric {
      type = "Resource"
      resource {
        name = "cpu"
        target {
          type                = "Utilization"
          average_utilization = each.value.target_cpu_percent
        }
      }
    }
    behavior {
      scale_down {
        stabilization_window_seconds = 300
        select_policy                = "Max"
        policy {
          type           = "Percent"
          value          = 50
          period_seconds = 60
        }
      }
    }
  }
}

resource "kubernetes_pod_disruption_budget_v1" "gateway" {
  for_each = local.gateway

  metadata {
    name      = "videogen-gateway"
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    max_unavailable = "1"
    selector {
      match_labels = local.gateway_labels
    }
  }
}

# default-deny is in network.tf: let the ingress controller reach the gateway's port
resource "kubernetes_network_policy_v1" "gateway_ingress" {
  for_each = local.gateway

  metadata {
    name      = "videogen-allow-gateway-ingress"
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    pod_selector {
      match_labels = local.gateway_labels
    }
    policy_types = ["Ingress"]
    ingress {
      from {
        namespace_selector {
          match_labels = { "kubernetes.io/metadata.name" = each.value.ingress_namespace }
        }
      }
      port {
        port     = tostring(local.gateway_port)
        protocol = "TCP"
      }
    }
  }
}
