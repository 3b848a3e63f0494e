# NATS with JetStream from the official Helm chart: a 3-server RAFT cluster, file storage on PVCs,
# `sync_interval: always` (a publish acknowledged by JetStream is on disk on a quorum of servers),
# password auth with a least-privilege user for the app, and a NetworkPolicy around it.
# Streams, consumers and the KV bucket are declared by the nats-jetstream module.

locals {
  selector = {
    "app.kubernetes.io/name"      = "nats"
    "app.kubernetes.io/instance"  = var.release_name
    "app.kubernetes.io/component" = "nats"
  }
  labels = {
    "app.kubernetes.io/part-of"    = "videogen"
    "app.kubernetes.io/managed-by" = "terraform"
  }
  auth_secret = "${var.release_name}-auth"

  container_security = {
    allowPrivilegeEscalation = false
    readOnlyRootFilesystem   = true
    runAsNonRoot             = true
    capabilities             = { drop = ["ALL"] }
  }

  # What the videogen services need and nothing else: publish to videogen.* subjects, use the
  # JetStream API (pull, ack, KV), receive replies on inboxes.
  app_permissions = {
    publish = {
      allow = ["videogen.>", "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.videogen-jobs.>", "$KV.videogen-apikeys.>", "$KV.videogen-runners.>", "$KV.videogen-renders.>", "_INBOX.>"]
    }
    subscribe = {
      allow = ["_INBOX.>", "videogen.>", "$KV.videogen-jobs.>", "$KV.videogen-apikeys.>", "$KV.videogen-runners.>", "$KV.videogen-renders.>"]
    }
    allow_responses = true
  }

  values = {
    fullnameOverride = var.release_name
    global           = { labels = local.labels }

    config = {
      cluster = {
        enabled  = true
        replicas = var.replicas
      }
      jetstream = {
        enabled = true
        fileStore = {
          enabled = true
          dir     = "/data"
          pvc = {
            enabled          = true
            size             = var.storage_size
            storageClassName = var.storage_class
          }
        }
        memoryStore = { enabled = false }
        # fsync every write before acknowledging it (ARCHITECTURE.md: acknowledged = on disk)
        merge = { sync_interval = "always" }
      }
      monitor = { enabled = true }
      merge = {
        authorization = {
          users = [
            { user = "admin", password = "<< $NATS_ADMIN_PASSWORD >>" },
            { user = var.app_user, password = "<< $NATS_APP_PASSWORD >>", permissions = local.app_permissions },
          ]
        }
      }
    }

    container = {
      env = {
        GOMEMLIMIT          = var.gomemlimit
        NATS_ADMIN_PASSWORD = { valueFrom = { secretKeyRef = { name = local.auth_secret, key = "admin-password" } } }
        NATS_APP_PASSWORD   = { valueFrom = { secretKeyRef = { name = local.auth_secret, key = "app-password" } } }
      }
      resources = var.resources
      merge     = { securityContext = local.container_security }
    }
    reloader = {
      enabled = true
      merge = {
        securityContext = local.container_security
        resources = {
          requests = { cpu = "10m", memory = "32Mi" }
          limits   = { cpu = "100m", memory = "64Mi" }
        }
      }
    }
    promExporter = {
      enabled    = var.pod_monitor
      podMonitor = { enabled = var.pod_monitor }
      merge      = { securityContext = local.container_security }
    }

    podTemplate = {
      topologySpreadConstraints = {
        "kubernetes.io/hostname"      = { maxSkew = 1, whenUnsatisfiable = "DoNotSchedule" }
        "topology.kubernetes.io/zone" = { maxSkew = 1, whenUnsatisfiable = "ScheduleAnyway" }
      }
      merge = {
        spec = {
          automountServiceAccountToken = false
          nodeSelector                 = var.node_selector
          tolerations                  = var.tolerations
          securityContext = {
            runAsNonRoot        = true
            runAsUser           = 1000
            runAsGroup          = 1000
            fsGroup             = 1000
            fsGroupChangePolicy = "OnRootMismatch"
            seccompProfile      = { type = "RuntimeDefault" }
          }
        }
      }
    }
    podDisruptionBudget = { enabled = true } # maxUnavailable: 1 keeps the RAFT quorum during drains
    service = {
      ports = {
        leafnodes = { enabled = false }
        websocket = { enabled = false }
        mqtt      = { enabled = false }
      }
    }
    natsBox = {
      enabled = var.nats_box
      container = {
        merge = { securityContext = local.container_security }
      }
      podTemplate = {
        merge = {
          spec = {
            securityContext = { runAsNonRoot = true, runAsUser = 1000, seccompProfile = { type = "RuntimeDefault" } }
          }
        }
      }
    }
  }
}

resource "random_password" "admin" {
  length  = 40
  special = false # keeps the value safe inside nats.conf without quoting rules
}

resource "random_password" "app" {
  length  = 40
  special = false
}

resource "kubernetes_secret_v1" "auth" {
  metadata {
    name      = local.auth_secret
    namespace = var.namespace
    labels    = local.labels
  }
  data = {
    "admin-password" = random_password.admin.result
    "app-password"   = random_password.app.result
  }
  type = "Opaque"
}

# The app's NATS credentials, in the app namespace, under the names runtime/settings.py reads.
resource "kubernetes_secret_v1" "app" {
  metadata {
    name      = "videogen-nats"
    namespace = var.app_namespace
    labels    = local.labels
  }
  data = {
    VIDEOGEN_NATS_USER     = var.app_user
    VIDEOGEN_NATS_PASSWORD = random_password.app.result
  }
  type = "Opaque"
}

resource "helm_release" "nats" {
  name        = var.release_name
  namespace   = var.namespace
  repository  = "https://nats-io.github.io/k8s/helm/charts/"
  chart       = "nats"
  version     = var.chart_version
  wait        = true
  atomic      = true
  timeout     = 900
  max_history = 10

  values = [yamlencode(local.values)]

  depends_on = [kubernetes_secret_v1.auth]
}

resource "kubernetes_network_policy_v1" "nats" {
  metadata {
    name      = "${var.release_name}-ingress"
    namespace = var.namespace
    labels    = local.labels
  }

  spec {
    pod_selector {
      match_labels = local.selector
    }
    policy_types = ["Ingress"]

    # clients
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
        pod_selector {} # nats-box and tooling in the NATS namespace itself
      }
      port {
        port     = "4222"
        protocol = "TCP"
      }
    }

    # cluster routes: only between the NATS servers
    ingress {
      from {
        pod_selector {
          match_labels = local.selector
        }
      }
      port {
        port     = "6222"
        protocol = "TCP"
      }
    }

    # monitoring (/jsz for KEDA, /healthz, /varz) and the exporter sidecar
    ingress {
      dynamic "from" {
        for_each = toset(var.monitoring_namespaces)
        content {
          namespace_selector {
            match_labels = { "kubernetes.io/metadata.name" = from.value }
          }
        }
      }
      port {
        port     = "8222"
        protocol = "TCP"
      }
      port {
        port     = "7777"
        protocol = "TCP"
      }
    }
  }
}
