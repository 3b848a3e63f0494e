# Model cache: diffusers-format checkpoints at /models/<model>/ (VIDEOGEN_MODELS_DIR), shared
# read-only by every runner. A new PVC unless model_cache.existing_claim names one; one fetch Job
# per served model downloads its checkpoint once and marks it complete.

resource "kubernetes_persistent_volume_claim_v1" "models" {
  count = var.model_cache.existing_claim == null && local.needs_model_cache ? 1 : 0

  metadata {
    name      = local.model_cache_claim
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    access_modes       = [var.model_cache.access_mode]
    storage_class_name = var.model_cache.storage_class
    resources {
      requests = {
        storage = var.model_cache.size
      }
    }
  }
  wait_until_bound = false # WaitForFirstConsumer classes bind when the first pod mounts it

  lifecycle {
    prevent_destroy = true # hundreds of GB of checkpoints; delete by hand if you mean it
  }
}

resource "kubernetes_service_account_v1" "fetch" {
  count = length(local.fetched_models) > 0 ? 1 : 0

  metadata {
    name      = "videogen-model-fetch"
    namespace = var.namespace
    labels    = local.labels
  }
  automount_service_account_token = false
}

resource "kubernetes_job_v1" "fetch" {
  for_each = local.fetched_models

  metadata {
    # a new revision is a new Job; the name stays within 63 characters
    name      = "videogen-fetch-${substr(local.k8s_model[each.key], 0, 30)}-${substr(sha1("${each.value.hub_id}@${coalesce(each.value.revision, "main")}"), 0, 8)}"
    namespace = var.namespace
    labels = merge(local.labels, {
      "app.kubernetes.io/name" = "videogen-model-fetch"
      "videogen.io/model"      = local.k8s_model[each.key]
    })
  }

  wait_for_completion = false # runners wait for the .complete marker instead

  spec {
    backoff_limit              = 6
    ttl_seconds_after_finished = 86400

    template {
      metadata {
        labels = merge(local.labels, {
          "app.kubernetes.io/name"      = "videogen-model-fetch"
          "videogen.io/internet-egress" = "true"
        })
      }

      spec {
        service_account_name            = kubernetes_service_account_v1.fetch[0].metadata[0].name
        automount_service_account_token = false
        restart_policy                  = "OnFailure"
        node_selector                   = var.cpu_node_selector

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

        container {
          name              = "fetch"
          image             = var.image
          image_pull_policy = var.image_pull_policy
          # resumable: snapshot_download skips files already present; the marker goes last
          command = [
            "python", "-c",
            join("\n", [
              "import os, sys",
              "from huggingface_hub import snapshot_download",
              "repo, revision, dst = sys.argv[1], sys.argv[2] or None, sys.argv[3]",
              "snapshot_download(repo_id=repo, revision=revision, local_dir=dst)",
              "with open(os.path.join(dst, '.complete'), 'w') as f:",
              "    f.write(f'{repo}@{revision or \"main\"}\\n')",
              "print('fetched', repo, revision, 'into', dst, flush=True)",
            ]),
            each.value.hub_id,
            coalesce(each.value.revision, ""),
            "${local.models_mount}/${each.key}",
          ]

          env {
            name  = "HOME"
            value = "/tmp"
          }
          env {
            name  = "HF_HOME"
            value = "/tmp/.cache/huggingface"
          }
          env {
            name  = "HF_HUB_DISABLE_TELEMETRY"
            value = "1"
          }
          dynamic "env" {
            for_each = var.model_cache.hf_token_secret == null ? [] : [var.model_cache.hf_token_secret]
            content {
              name = "HF_TOKEN"
              value_from {
                secret_key_ref {
                  name = env.value
                  key  = "HF_TOKEN"
                }
              }
            }
          }

          resources {
            requests = { cpu = "500m", memory = "1Gi", "ephemeral-storage" = "1Gi" }
            limits   = { cpu = "2", memory = "4Gi", "ephemeral-storage" = "10Gi" }
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
          volume_mount {
            name       = "models"
            mount_path = local.models_mount
          }
        }

        volume {
          name = "tmp"
          empty_dir {
            size_limit = "10Gi"
          }
        }
        volume {
          name = "models"
          persistent_volume_claim {
            claim_name = local.model_cache_claim
          }
        }
      }
    }
  }

  depends_on = [kubernetes_persistent_volume_claim_v1.models]
}
