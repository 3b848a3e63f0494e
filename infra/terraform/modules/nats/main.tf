# NATS with JetStream from the official Helm chart: a 3-server RAFT cluster, file storage on PVCs,
# `sync_interval: always` (a publish acknowledged by JetStream is on disk on a quorum of servers),
# NATS accounts (issue 13, docs/SECURITY-DESIGN.md): a SERVICE account with JetStream (the admin,
# the app user the stack's processes use, one least-privilege user per stage and the `default`
# tenant), one account per tenant in var.tenants (no JetStream; imports only its own subjects),
# optional TLS on the client port (cert-manager), and a NetworkPolicy around it. The permissions and
# imports are generated from runtime/accounts.py into accounts.gen.tf.
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

  # Secret key and env var of every generated password (values: random_password.users / var.tenants)
  stage_users  = keys(local.nats_stage_permissions)
  password_env = merge(
    { for s in local.stage_users : "stage-${s}" => "NATS_STAGE_${upper(replace(s, "-", "_"))}_PASSWORD" },
    { "default" = "NATS_DEFAULT_PASSWORD" },
    { for t in keys(var.tenants) : "tenant-${t}" => "NATS_TENANT_${upper(replace(t, "-", "_"))}_PASSWORD" },
  )
  service_users = concat(
    [
      { user = "admin", password = "<< $NATS_ADMIN_PASSWORD >>" },
      { user = var.app_user, password = "<< $NATS_APP_PASSWORD >>", permissions = local.app_permissions },
      { user = "default", password = "<< $NATS_DEFAULT_PASSWORD >>", permissions = local.nats_default_tenant_permissions },
    ],
    [for s in local.stage_users : {
      user        = "stage-${s}"
      password    = format("<< $%s >>", local.password_env["stage-${s}"])
      permissions = local.nats_stage_permissions[s]
    }],
  )
  tenant_accounts = { for t in keys(var.tenants) : t => {
    users = [{ user = t, password = format("<< $%s >>", local.password_env["tenant-${t}"]), permissions = local.nats_tenant_permissions }]
    imports = [for i in local.nats_tenant_imports : {
      (i.kind) = { account = local.nats_service_account, subject = format(i.subject, t) }
      to       = i.to
    }]
  } }
  accounts = merge(
    {
      (local.nats_service_account) = { jetstream = "enabled", users = local.service_users, exports = local.nats_service_exports }
      (local.nats_system_account)  = {}
    },
    local.tenant_accounts,
  )
  tls_values = var.tls.enabled ? {
    enabled    = true
    secretName = var.tls.secret_name
    merge      = { verify = var.tls.verify_clients, timeout = 5 }
  } : { enabled = false }

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
      nats    = { tls = local.tls_values }
      merge = {
        accounts       = local.accounts
        system_account = local.nats_system_account
      }
    }

    container = {
      env = merge({
        GOMEMLIMIT          = var.gomemlimit
        NATS_ADMIN_PASSWORD = { valueFrom = { secretKeyRef = { name = local.auth_secret, key = "admin-password" } } }
        NATS_APP_PASSWORD   = { valueFrom = { secretKeyRef = { name = local.auth_secret, key = "app-password" } } }
        }, { for user, env in local.password_env :
        env => { valueFrom = { secretKeyRef = { name = local.auth_secret, key = "${user}-password" } } }
      })
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

# stage users and the default tenant (tenants bring their own: `videogen tenants add` -> var.tenants)
resource "random_password" "users" {
  for_each = toset(concat([for s in local.stage_users : "stage-${s}"], ["default"]))
  length   = 40
  special  = false
}

# TLS on the client port: a cert-manager Certificate into var.tls.secret_name (when an issuer is named;
# otherwise the operator provides that Secret). Clients set VIDEOGEN_NATS_TLS_CA to the issuing CA.
resource "kubernetes_manifest" "certificate" {
  count = var.tls.enabled && var.tls.issuer_name != null ? 1 : 0
  manifest = {
    apiVersion = "cert-manager.io/v1"
    kind       = "Certificate"
    metadata   = { name = var.tls.secret_name, namespace = var.namespace, labels = local.labels }
    spec = {
      secretName = var.tls.secret_name
      issuerRef  = { name = var.tls.issuer_name, kind = var.tls.issuer_kind, group = "cert-manager.io" }
      dnsNames = [
        var.release_name, "${var.release_name}.${var.namespace}", "${var.release_name}.${var.namespace}.svc",
        "${var.release_name}.${var.namespace}.svc.cluster.local",
        "*.${var.release_name}-headless.${var.namespace}.svc.cluster.local",
      ]
      duration    = "2160h"
      renewBefore = "360h"
      privateKey  = { algorithm = "ECDSA", size = 256, rotationPolicy = "Always" }
    }
  }
}

resource "kubernetes_secret_v1" "auth" {
  metadata {
    name      = local.auth_secret
    namespace = var.namespace
    labels    = local.labels
  }
  data = merge(
    {
      "admin-password" = random_password.admin.result
      "app-password"   = random_password.app.result
    },
    { for user, pw in random_password.users : "${user}-password" => pw.result },
    { for t, v in var.tenants : "tenant-${t}-password" => v.nats_password },
  )
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

# One Secret per stage user in the app namespace (VIDEOGEN_NATS_USER=stage-<name>, its password): each
# stage Deployment of modules/videogen connects as its own user (the runner: stage-runner), with only
# the subjects runtime/accounts.py lists for it (accounts.gen.tf), never as the app user.
resource "kubernetes_secret_v1" "stage" {
  for_each = toset(local.stage_users)
  metadata {
    name      = "videogen-nats-stage-${each.key}"
    namespace = var.app_namespace
    labels    = local.labels
  }
  data = {
    VIDEOGEN_NATS_USER     = "stage-${each.key}"
    VIDEOGEN_NATS_PASSWORD = random_password.users["stage-${each.key}"].result
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

  depends_on = [kubernetes_secret_v1.auth, kubernetes_manifest.certificate]
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
