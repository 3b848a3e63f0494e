# KEDA operator + metrics API server. The chart's defaults already run non-root with a read-only
# root filesystem and dropped capabilities; we pin the version, wait for the CRDs, and keep the
# operator off GPU nodes.
resource "helm_release" "keda" {
  name        = "keda"
  namespace   = var.namespace
  repository  = "https://kedacore.github.io/charts"
  chart       = "keda"
  version     = var.chart_version
  wait        = true
  atomic      = true
  timeout     = 600
  max_history = 10

  values = [yamlencode({
    nodeSelector = var.node_selector
    resources = {
      operator = {
        requests = { cpu = "100m", memory = "128Mi" }
        limits   = { cpu = "1", memory = "512Mi" }
      }
      metricServer = {
        requests = { cpu = "100m", memory = "128Mi" }
        limits   = { cpu = "1", memory = "512Mi" }
      }
      webhooks = {
        requests = { cpu = "50m", memory = "64Mi" }
        limits   = { cpu = "500m", memory = "256Mi" }
      }
    }
  })]
}
