# GPU runners: `videogen runner --model <m> --nproc-per-node <N>` wraps torchrun with one process
# per GPU of the pod; rank 0 pulls segments from the model's durable consumer and does all I/O,
# every rank computes (sequence parallelism). One Deployment per var.runners entry, scaled by KEDA
# on the model's pending segments (autoscaling.tf).

resource "kubernetes_deployment_v1" "runner" {
  #checkov:skip=CKV_K8S_14:The image is var.image, which the variable's validation rejects unless it carries an explicit version tag (never :latest) or a sha256 digest; checkov cannot see through the variable.
  #checkov:skip=CKV_K8S_43:Digest pinning is enforced where it matters: environments/prod validates var.image against @sha256:<digest>; dev may use a version tag.
  #checkov:skip=CKV_K8S_15:Images are immutable (version tag or digest), so IfNotPresent is correct; Always would make every GPU scale-up from zero depend on the registry being reachable.
  for_each = local.runners

  metadata {
    name      = "videogen-runner-${each.key}"
    namespace = var.namespace
    labels = merge(local.labels, {
      "app.kubernetes.io/name"      = "videogen-runner-${each.key}"
      "app.kubernetes.io/component" = "runner"
      "videogen.io/model"           = local.k8s_model[each.value.model]
    })
  }

  lifecycle {
    ignore_changes = [spec[0].replicas] # KEDA owns it
  }

  # A GPU pod can wait minutes for a node and for its weights: don't block `terraform apply` on it.
  wait_for_rollout = false

  spec {
    replicas                  = each.value.min_replicas
    revision_history_limit    = 5
    progress_deadline_seconds = each.value.startup_timeout_s + 600

    selector {
      match_labels = { "app.kubernetes.io/name" = "videogen-runner-${each.key}" }
    }

    # max_unavailable 0: a rollout never lowers serving capacity (needs spare GPUs or a node
    # autoscaler for the surge pod; set max_surge 0 / max_unavailable 1 on a fixed GPU pool).
    strategy {
      type = "RollingUpdate"
      rolling_update {
        max_surge       = each.value.max_surge
        max_unavailable = each.value.max_unavailable
      }
    }

    template {
      metadata {
        labels = merge(local.labels, {
          "app.kubernetes.io/name"      = "videogen-runner-${each.key}"
          "app.kubernetes.io/component" = "runner"
          "videogen.io/model"           = local.k8s_model[each.value.model]
          "videogen.io/internet-egress" = "false"
        })
        annotations = local.pod_annotations
      }

      spec {
        service_account_name             = kubernetes_service_account_v1.runner[each.key].metadata[0].name
        automount_service_account_token  = false
        enable_service_links             = false
        termination_grace_period_seconds = each.value.termination_grace_s
        node_selector                    = each.value.node_selector
        priority_class_name              = var.gpu_priority_class

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
          for_each = each.value.gpus_per_pod > 0 ? each.value.tolerations : []
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

        # spread replicas of one runner over nodes (a node failure costs one runner, not all)
        topology_spread_constraint {
          max_skew           = 1
          topology_key       = "kubernetes.io/hostname"
          when_unsatisfiable = "ScheduleAnyway"
          label_selector {
            match_labels = { "app.kubernetes.io/name" = "videogen-runner-${each.key}" }
          }
        }

        # wait until the model's checkpoint download finished (model_cache.tf writes .complete)
        dynamic "init_container" {
          for_each = contains(keys(local.fetched_models), each.value.model) ? [each.value.model] : []
          content {
            name              = "wait-for-checkpoint"
            image             = var.image
            image_pull_policy = var.image_pull_policy
            command = [
              "python", "-c",
              "import os,sys,time\np=sys.argv[1]\nwhile not os.path.exists(p):\n    print('waiting for', p, flush=True)\n    time.sleep(15)\n",
              "${local.models_mount}/${init_container.value}/.complete",
            ]
            resources {
              requests = { cpu = "10m", memory = "64Mi" }
              limits   = { cpu = "100m", memory = "128Mi" }
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
              name       = "models"
              mount_path = local.models_mount
              read_only  = true
            }
          }
        }

        container {
          name              = "runner"
          image             = var.image
          image_pull_policy = var.image_pull_policy
          command           = ["videogen"]
          args              = ["runner", "--model", each.value.model, "--nproc-per-node", tostring(each.value.nproc)]

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
            name  = "VIDEOGEN_RUNNER_MODEL"
            value = each.value.model
          }
          env {
            name  = "VIDEOGEN_RUNNER_DEVICE"
            value = each.value.device
          }
          dynamic "env" {
            for_each = each.value.max_window_frames == null ? [] : [each.value.max_window_frames]
            content {
              name  = "VIDEOGEN_RUNNER_MAX_WINDOW_FRAMES"
              value = tostring(env.value)
            }
          }
          env {
            name = "VIDEOGEN_NATS_USER"
            value_from {
              secret_key_ref {
                name = var.nats.stage_credentials_secrets["runner"] # its own NATS user
                key  = "VIDEOGEN_NATS_USER"
              }
            }
          }
          env {
            name = "VIDEOGEN_NATS_PASSWORD"
            value_from {
              secret_key_ref {
                name = var.nats.stage_credentials_secrets["runner"] # its own NATS user
                key  = "VIDEOGEN_NATS_PASSWORD"
              }
            }
          }
          env {
            name = "VIDEOGEN_S3_ACCESS_KEY"
            value_from {
              secret_key_ref {
                name = var.s3.credentials_secrets["runner"]
                key  = "VIDEOGEN_S3_ACCESS_KEY"
              }
            }
          }
          env {
            name = "VIDEOGEN_S3_SECRET_KEY"
            value_from {
              secret_key_ref {
                name = var.s3.credentials_secrets["runner"]
                key  = "VIDEOGEN_S3_SECRET_KEY"
              }
            }
          }

          # GPUs: requests = limits = gpus_per_pod (0 for a CPU runner of a tiny model)
          resources {
            requests = {
              cpu                       = each.value.cpu_request
              memory                    = each.value.memory_request
              "ephemeral-storage"       = "1Gi"
              (each.value.gpu_resource) = tostring(each.value.gpus_per_pod)
            }
            limits = {
              cpu                       = each.value.cpu_limit
              memory                    = each.value.memory_limit
              "ephemeral-storage"       = each.value.tmp_size
              (each.value.gpu_resource) = tostring(each.value.gpus_per_pod)
            }
          }

          # loading a 14B checkpoint and warming up takes minutes
          startup_probe {
            http_get {
              path = "/healthz"
              port = "http-health"
            }
            period_seconds    = 10
            timeout_seconds   = 5
            failure_threshold = ceil(each.value.startup_timeout_s / 10)
          }

          readiness_probe {
            http_get {
              path = "/readyz"
              port = "http-health"
            }
            period_seconds    = 10
            timeout_seconds   = 5
            failure_threshold = 3
          }

          # generous: rank 0 serves health from its event loop while the GPUs work
          liveness_probe {
            http_get {
              path = "/healthz"
              port = "http-health"
            }
            period_seconds    = 20
            timeout_seconds   = 10
            failure_threshold = 6
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
          # NCCL and torch.multiprocessing exchange tensors through /dev/shm
          volume_mount {
            name       = "dshm"
            mount_path = "/dev/shm"
          }
          volume_mount {
            name       = "models"
            mount_path = local.models_mount
            read_only  = true
          }
        }

        volume {
          name = "tmp"
          empty_dir {
            size_limit = each.value.tmp_size
          }
        }
        volume {
          name = "dshm"
          empty_dir {
            medium     = "Memory"
            size_limit = each.value.shm_size
          }
        }
        # the checkpoint cache; tiny models are built in-process and get an empty directory
        volume {
          name = "models"
          dynamic "persistent_volume_claim" {
            for_each = each.value.tiny ? [] : [local.model_cache_claim]
            content {
              claim_name = persistent_volume_claim.value
              read_only  = true
            }
          }
          dynamic "empty_dir" {
            for_each = each.value.tiny ? [1] : []
            content {
              size_limit = "64Mi"
            }
          }
        }
      }
    }
  }

  depends_on = [kubernetes_persistent_volume_claim_v1.models]
}

resource "kubernetes_pod_disruption_budget_v1" "runner" {
  for_each = local.runners

  metadata {
    name      = "videogen-runner-${each.key}"
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    # drains evict one runner at a time; its in-flight segment is finished within the grace period
    # or redelivered to another runner by JetStream (ack_wait + backoff)
    max_unavailable = "1"
    selector {
      match_labels = { "app.kubernetes.io/name" = "videogen-runner-${each.key}" }
    }
  }
}
