# The CPU functions: `videogen functions <stage>`, one Deployment per stage of runtime/service.py.
# Consumer stages are scaled by KEDA on the lag of their durable consumer (autoscaling.tf), down to
# zero when idle; periodic stages (a timer, no consumer) run one replica.

resource "kubernetes_deployment_v1" "function" {
  #checkov:skip=CKV_K8S_14:The image is var.image, which the variable's validation rejects unless it carries an explicit version tag (never :latest) or a sha256 digest; checkov cannot see through the variable.
  #checkov:skip=CKV_K8S_43:Digest pinning is enforced where it matters: environments/prod validates var.image against @sha256:<digest>; dev may use a version tag.
  #checkov:skip=CKV_K8S_15:Images are immutable (version tag or digest), so IfNotPresent is correct; Always would make every GPU scale-up from zero depend on the registry being reachable.
  #checkov:skip=CKV_K8S_35:runtime/settings.py reads configuration only from VIDEOGEN_* environment variables (pydantic-settings, no secrets_dir); each Secret is per workload and least privilege (every stage has its own S3 user; only webhook gets the signing secret).
  for_each = local.functions

  metadata {
    name      = "videogen-${each.key}"
    namespace = var.namespace
    labels = merge(local.labels, {
      "app.kubernetes.io/name"      = "videogen-${each.key}"
      "app.kubernetes.io/component" = "function"
    })
  }

  # KEDA owns the replica count once the ScaledObject exists.
  lifecycle {
    ignore_changes = [spec[0].replicas]
  }

  wait_for_rollout = false # a function scaled to zero has nothing to roll out

  spec {
    replicas               = each.value.min_replicas
    revision_history_limit = 5

    selector {
      match_labels = { "app.kubernetes.io/name" = "videogen-${each.key}" }
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
        labels = merge(local.labels, {
          "app.kubernetes.io/name"      = "videogen-${each.key}"
          "app.kubernetes.io/component" = "function"
          "videogen.io/internet-egress" = each.value.internet_egress ? "true" : "false"
        })
        annotations = local.pod_annotations
      }

      spec {
        service_account_name             = kubernetes_service_account_v1.function[each.key].metadata[0].name
        automount_service_account_token  = false
        enable_service_links             = false
        termination_grace_period_seconds = each.value.termination_grace_s
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
            match_labels = { "app.kubernetes.io/name" = "videogen-${each.key}" }
          }
        }

        container {
          name              = "function"
          image             = var.image
          image_pull_policy = var.image_pull_policy
          command           = ["videogen"]
          args              = ["functions", each.key] # one stage per Deployment

          port {
            name           = "http-health"
            container_port = local.health_port
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
                name = var.nats.stage_credentials_secrets[each.key] # its own NATS user
                key  = "VIDEOGEN_NATS_USER"
              }
            }
          }
          env {
            name = "VIDEOGEN_NATS_PASSWORD"
            value_from {
              secret_key_ref {
                name = var.nats.stage_credentials_secrets[each.key] # its own NATS user
                key  = "VIDEOGEN_NATS_PASSWORD"
              }
            }
          }

          # this stage's own S3 user (least privilege, infra/tools/stage_access.py)
          dynamic "env" {
            for_each = each.value.s3_secret == null ? [] : ["VIDEOGEN_S3_ACCESS_KEY", "VIDEOGEN_S3_SECRET_KEY"]
            content {
              name = env.value
              value_from {
                secret_key_ref {
                  name = each.value.s3_secret
                  key  = env.value
                }
              }
            }
          }

          # only the webhook function signs deliveries
          dynamic "env" {
            for_each = each.key == "webhook" ? [var.webhook_secret] : []
            content {
              name = "VIDEOGEN_WEBHOOK_SECRET"
              value_from {
                secret_key_ref {
                  name = env.value.name
                  key  = env.value.key
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
              "ephemeral-storage" = each.value.tmp_size
            }
          }

          startup_probe {
            http_get {
              path = "/healthz"
              port = "http-health"
            }
            period_seconds    = 5
            timeout_seconds   = 3
            failure_threshold = 24
          }

          readiness_probe {
            http_get {
              path = "/readyz"
              port = "http-health"
            }
            period_seconds    = 10
            timeout_seconds   = 3
            failure_threshold = 3
          }

          liveness_probe {
            http_get {
              path = "/healthz"
              port = "http-health"
            }
            period_seconds    = 15
            timeout_seconds   = 5
            failure_threshold = 4
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
            mount_path = "/tmp"
          }
        }

        volume {
          name = "tmp"
          empty_dir {
            size_limit = each.value.tmp_size
          }
        }
      }
    }
  }
}

resource "kubernetes_pod_disruption_budget_v1" "function" {
  for_each = local.functions

  metadata {
    name      = "videogen-${each.key}"
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    # one pod at a time: a drain never takes a whole stage down, and never blocks (unlike minAvailable
    # on a stage that KEDA may have scaled to a single pod)
    max_unavailable = "1"
    selector {
      match_labels = { "app.kubernetes.io/name" = "videogen-${each.key}" }
    }
  }
}
