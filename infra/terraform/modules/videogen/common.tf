# Settings every videogen process reads (runtime/settings.py, VIDEOGEN_ prefix). Secrets are not
# here: they come from Kubernetes Secrets, per workload, in functions.tf / runners.tf.
resource "kubernetes_config_map_v1" "env" {
  metadata {
    name      = "videogen-env"
    namespace = var.namespace
    labels    = local.labels
  }
  data = local.common_env
}

# One ServiceAccount per workload, without an API token: no videogen process talks to the
# Kubernetes API.
resource "kubernetes_service_account_v1" "function" {
  for_each = local.functions

  metadata {
    name      = "videogen-${each.key}"
    namespace = var.namespace
    labels    = merge(local.labels, { "app.kubernetes.io/name" = "videogen-${each.key}" })
  }
  automount_service_account_token = false
}

resource "kubernetes_service_account_v1" "runner" {
  for_each = local.runners

  metadata {
    name      = "videogen-runner-${each.key}"
    namespace = var.namespace
    labels    = merge(local.labels, { "app.kubernetes.io/name" = "videogen-runner-${each.key}" })
  }
  automount_service_account_token = false
}
