# MinIO as a StatefulSet (distributed erasure-coded with >= 4 replicas), the videogen bucket with
# an expiry lifecycle rule, and one MinIO user per pipeline stage with a least-privilege policy.
# The bucket, rule, users and policies are created by minio/init.sh (the same script a local
# MinIO uses) run as a Job; the policies come from the s3-stage-policies module.

module "policies" {
  source = "../s3-stage-policies"
  bucket = var.bucket
}

locals {
  name = "minio"
  labels = {
    "app.kubernetes.io/part-of"    = "videogen"
    "app.kubernetes.io/managed-by" = "terraform"
  }
  selector = {
    "app.kubernetes.io/name"     = local.name
    "app.kubernetes.io/instance" = "videogen-minio"
  }
  headless = "${local.name}-hl"
  # distributed: every server lists every server's drive (ellipsis notation expands the range)
  volumes     = var.replicas == 1 ? "/data" : "http://${local.name}-{0...${var.replicas - 1}}.${local.headless}.${var.namespace}.svc.cluster.local:9000/data"
  stages      = module.policies.deployed_stages
  init_script = file("${path.module}/../../../../minio/init.sh") # the same script a local MinIO runs
}

resource "random_password" "root" {
  length  = 40
  special = false
}

resource "random_password" "stage" {
  for_each = toset(local.stages)
  length   = 40
  special  = false
}

resource "kubernetes_secret_v1" "root" {
  metadata {
    name      = "minio-root"
    namespace = var.namespace
    labels    = local.labels
  }
  data = {
    MINIO_ROOT_USER     = "videogen-root"
    MINIO_ROOT_PASSWORD = random_password.root.result
  }
  type = "Opaque"
}

# the init Job reads the stage secrets from its own namespace
resource "kubernetes_secret_v1" "stage_init" {
  metadata {
    name      = "minio-stage-credentials"
    namespace = var.namespace
    labels    = local.labels
  }
  data = { for s in local.stages : "VIDEOGEN_S3_SECRET_${upper(s)}" => random_password.stage[s].result }
  type = "Opaque"
}

# what each workload mounts: its stage's access key and secret key, under the names the app reads
resource "kubernetes_secret_v1" "stage" {
  for_each = toset(local.stages)

  metadata {
    name      = "videogen-s3-${each.key}"
    namespace = var.app_namespace
    labels    = merge(local.labels, { "videogen.io/stage" = each.key })
  }
  data = {
    VIDEOGEN_S3_ACCESS_KEY = "videogen-${each.key}"
    VIDEOGEN_S3_SECRET_KEY = random_password.stage[each.key].result
  }
  type = "Opaque"
}

resource "kubernetes_service_v1" "headless" {
  metadata {
    name      = local.headless
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    cluster_ip                  = "None"
    publish_not_ready_addresses = true
    selector                    = local.selector
    port {
      name        = "s3"
      port        = 9000
      target_port = "s3"
    }
  }
}

resource "kubernetes_service_v1" "api" {
  metadata {
    name      = local.name
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    type     = "ClusterIP"
    selector = local.selector
    port {
      name        = "s3"
      port        = 9000
      target_port = "s3"
    }
  }
}

resource "kubernetes_service_account_v1" "minio" {
  metadata {
    name      = local.name
    namespace = var.namespace
    labels    = local.labels
  }
  automount_service_account_token = false
}

resource "kubernetes_stateful_set_v1" "minio" {
  metadata {
    name      = local.name
    namespace = var.namespace
    labels    = merge(local.labels, local.selector)
  }

  spec {
    service_name          = kubernetes_service_v1.headless.metadata[0].name
    replicas              = var.replicas
    pod_management_policy = "Parallel" # distributed MinIO waits for all peers at start

    selector {
      match_labels = local.selector
    }

    update_strategy {
      type = "RollingUpdate"
    }

    template {
      metadata {
        labels = merge(local.labels, local.selector)
      }

      spec {
        service_account_name             = kubernetes_service_account_v1.minio.metadata[0].name
        automount_service_account_token  = false
        enable_service_links             = false
        termination_grace_period_seconds = 60
        node_selector                    = var.node_selector

        security_context {
          run_as_non_root        = true
          run_as_user            = 10001
          run_as_group           = 10001
          fs_group               = 10001
          fs_group_change_policy = "OnRootMismatch"
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        topology_spread_constraint {
          max_skew           = 1
          topology_key       = "kubernetes.io/hostname"
          when_unsatisfiable = var.replicas == 1 ? "ScheduleAnyway" : "DoNotSchedule"
          label_selector {
            match_labels = local.selector
          }
        }

        container {
          name              = "minio"
          image             = var.image
          image_pull_policy = "IfNotPresent"
          command           = ["minio"]
          args              = ["server", local.volumes, "--address", ":9000", "--console-address", ":9001", "--certs-dir", "/tmp/certs"]

          port {
            name           = "s3"
            container_port = 9000
            protocol       = "TCP"
          }
          port {
            name           = "console"
            container_port = 9001
            protocol       = "TCP"
          }

          env_from {
            secret_ref {
              name = kubernetes_secret_v1.root.metadata[0].name
            }
          }
          env {
            name  = "HOME"
            value = "/tmp"
          }
          env {
            name  = "MINIO_PROMETHEUS_AUTH_TYPE"
            value = "public"
          }
          env {
            name  = "MINIO_BROWSER"
            value = "off" # administer with mc; the console is not exposed
          }

          resources {
            requests = var.resources.requests
            limits   = var.resources.limits
          }

          readiness_probe {
            http_get {
              path = "/minio/health/ready"
              port = "s3"
            }
            period_seconds    = 10
            timeout_seconds   = 5
            failure_threshold = 3
          }
          liveness_probe {
            http_get {
              path = "/minio/health/live"
              port = "s3"
            }
            initial_delay_seconds = 30
            period_seconds        = 20
            timeout_seconds       = 5
            failure_threshold     = 3
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
            name       = "data"
            mount_path = "/data"
          }
          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
        }

        volume {
          name = "tmp"
          empty_dir {
            size_limit = "1Gi"
          }
        }
      }
    }

    volume_claim_template {
      metadata {
        name   = "data"
        labels = local.labels
      }
      spec {
        access_modes       = ["ReadWriteOnce"]
        storage_class_name = var.storage_class
        resources {
          requests = {
            storage = var.volume_size
          }
        }
      }
    }

    persistent_volume_claim_retention_policy {
      when_deleted = "Retain"
      when_scaled  = "Retain"
    }
  }

  timeouts {
    create = "15m"
    update = "15m"
  }
}

resource "kubernetes_pod_disruption_budget_v1" "minio" {
  count = var.replicas > 1 ? 1 : 0

  metadata {
    name      = local.name
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    max_unavailable = "1" # erasure coding keeps reads and writes available with one server down
    selector {
      match_labels = local.selector
    }
  }
}

# ---- bucket, lifecycle rule, users, policies (minio/init.sh) ----------------------------------
resource "kubernetes_config_map_v1" "init" {
  metadata {
    name      = "minio-init"
    namespace = var.namespace
    labels    = local.labels
  }
  data = merge(
    { "init.sh" = local.init_script },
    { for stage, doc in module.policies.policy_json : "${stage}.json" => doc },
  )
}

resource "kubernetes_service_account_v1" "init" {
  metadata {
    name      = "minio-init"
    namespace = var.namespace
    labels    = local.labels
  }
  automount_service_account_token = false
}

resource "kubernetes_job_v1" "init" {
  metadata {
    # a new name whenever the script, the policies or the settings change, so the Job re-runs
    name      = "minio-init-${substr(sha1(jsonencode([local.init_script, module.policies.policy_json, var.bucket, var.expire_days, local.stages])), 0, 10)}"
    namespace = var.namespace
    labels    = merge(local.labels, { "app.kubernetes.io/name" = "minio-init" })
  }

  wait_for_completion = true

  spec {
    backoff_limit              = 10
    ttl_seconds_after_finished = 3600

    template {
      metadata {
        labels = merge(local.labels, { "app.kubernetes.io/name" = "minio-init" })
      }
      spec {
        service_account_name            = kubernetes_service_account_v1.init.metadata[0].name
        automount_service_account_token = false
        restart_policy                  = "OnFailure"

        security_context {
          run_as_non_root = true
          run_as_user     = 10001
          run_as_group    = 10001
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }

        container {
          name              = "init"
          image             = var.mc_image
          image_pull_policy = "IfNotPresent"
          command           = ["/bin/bash", "/init/init.sh"]

          env_from {
            secret_ref {
              name = kubernetes_secret_v1.root.metadata[0].name
            }
          }
          env_from {
            secret_ref {
              name = kubernetes_secret_v1.stage_init.metadata[0].name
            }
          }
          env {
            name  = "MINIO_ENDPOINT"
            value = "http://${kubernetes_service_v1.api.metadata[0].name}.${var.namespace}.svc.cluster.local:9000"
          }
          env {
            name  = "VIDEOGEN_BUCKET"
            value = var.bucket
          }
          env {
            name  = "VIDEOGEN_EXPIRE_DAYS"
            value = tostring(var.expire_days)
          }
          env {
            name  = "VIDEOGEN_STAGES"
            value = join(" ", local.stages)
          }
          env {
            name  = "POLICY_DIR"
            value = "/init"
          }
          env {
            name  = "MC_CONFIG_DIR"
            value = "/tmp/.mc"
          }
          env {
            name  = "HOME"
            value = "/tmp"
          }

          resources {
            requests = { cpu = "50m", memory = "64Mi" }
            limits   = { cpu = "500m", memory = "256Mi" }
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
            name       = "init"
            mount_path = "/init"
            read_only  = true
          }
          volume_mount {
            name       = "tmp"
            mount_path = "/tmp"
          }
        }

        volume {
          name = "init"
          config_map {
            name = kubernetes_config_map_v1.init.metadata[0].name
          }
        }
        volume {
          name = "tmp"
          empty_dir {
            size_limit = "64Mi"
          }
        }
      }
    }
  }

  timeouts {
    create = "15m"
    update = "15m"
  }

  depends_on = [kubernetes_stateful_set_v1.minio]
}

resource "kubernetes_network_policy_v1" "minio" {
  metadata {
    name      = "minio-ingress"
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    pod_selector {
      match_labels = local.selector
    }
    policy_types = ["Ingress"]

    # S3 API: the workloads, the init Job and the other MinIO servers
    ingress {
      dynamic "from" {
        for_each = toset(var.client_namespaces)
        content {
          namespace_selector {
            match_labels = { "kubernetes.io/metadata.name" = from.value }
          }
        }
      }
      from {
        pod_selector {}
      }
      port {
        port     = "9000"
        protocol = "TCP"
      }
    }
  }
}
