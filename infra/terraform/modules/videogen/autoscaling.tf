# KEDA ScaledObjects with the nats-jetstream scaler. The metric is the consumer's lag as KEDA
# reads it from the NATS monitoring endpoint (/jsz): num_pending + num_ack_pending, i.e. messages
# not yet delivered plus messages being worked on. Desired replicas = ceil(lag / lagThreshold),
# clamped to [min, max]; at lag <= activationLagThreshold a ScaledObject with min 0 scales to zero
# after its cooldown. Requires the KEDA CRDs (install the keda module first).

resource "kubernetes_manifest" "function_scaler" {
  for_each = { for name, f in local.functions : name => f if f.scaled }

  manifest = {
    apiVersion = "keda.sh/v1alpha1"
    kind       = "ScaledObject"
    metadata = {
      name      = "videogen-${each.key}"
      namespace = var.namespace
      labels    = local.labels
    }
    spec = {
      scaleTargetRef = {
        name = kubernetes_deployment_v1.function[each.key].metadata[0].name
      }
      pollingInterval = var.keda.polling_interval_s
      cooldownPeriod  = var.keda.function_cooldown_s
      minReplicaCount = each.value.min_replicas
      maxReplicaCount = each.value.max_replicas
      # if the NATS monitoring endpoint cannot be read, keep a consumer alive instead of freezing
      fallback = {
        failureThreshold = 3
        replicas         = max(each.value.min_replicas, min(var.keda.fallback_replicas_on_error, each.value.max_replicas))
      }
      advanced = {
        horizontalPodAutoscalerConfig = {
          behavior = {
            scaleDown = {
              stabilizationWindowSeconds = var.keda.function_scale_down_window_s
              policies                   = [{ type = "Percent", value = 50, periodSeconds = 60 }]
            }
          }
        }
      }
      triggers = [{
        type = "nats-jetstream"
        metadata = {
          natsServerMonitoringEndpoint = var.nats.monitoring_endpoint
          account                      = var.nats.account
          stream                       = each.value.stream
          consumer                     = each.value.consumer
          lagThreshold                 = tostring(each.value.lag_threshold)
          activationLagThreshold       = tostring(each.value.activation_lag_threshold)
          useHttps                     = "false"
        }
      }]
    }
  }
}

# Runners scale on the model's pending segments. A job has at most one segment in the queue at a
# time (segment k+1 is published when k is done), so with lagThreshold = 1 the desired replica
# count is the number of jobs in flight for that model, up to maxReplicaCount. Scale-down is slow
# and one pod at a time: an idle runner keeps its weights loaded through short gaps.
resource "kubernetes_manifest" "runner_scaler" {
  for_each = local.runners

  manifest = {
    apiVersion = "keda.sh/v1alpha1"
    kind       = "ScaledObject"
    metadata = {
      name      = "videogen-runner-${each.key}"
      namespace = var.namespace
      labels    = merge(local.labels, { "videogen.io/model" = local.k8s_model[each.value.model] })
    }
    spec = {
      scaleTargetRef = {
        name = kubernetes_deployment_v1.runner[each.key].metadata[0].name
      }
      pollingInterval = var.keda.polling_interval_s
      cooldownPeriod  = var.keda.runner_cooldown_s
      minReplicaCount = each.value.min_replicas
      maxReplicaCount = each.value.max_replicas
      fallback = {
        failureThreshold = 3
        replicas         = max(each.value.min_replicas, min(var.keda.fallback_replicas_on_error, each.value.max_replicas))
      }
      advanced = {
        horizontalPodAutoscalerConfig = {
          behavior = {
            scaleUp = {
              stabilizationWindowSeconds = 0
              policies                   = [{ type = "Pods", value = 4, periodSeconds = 60 }]
            }
            scaleDown = {
              stabilizationWindowSeconds = var.keda.runner_scale_down_window_s
              policies                   = [{ type = "Pods", value = 1, periodSeconds = 300 }]
            }
          }
        }
      }
      triggers = [{
        type = "nats-jetstream"
        metadata = {
          natsServerMonitoringEndpoint = var.nats.monitoring_endpoint
          account                      = var.nats.account
          stream                       = each.value.stream
          consumer                     = each.value.consumer
          lagThreshold                 = tostring(each.value.lag_threshold)
          activationLagThreshold       = tostring(each.value.activation_lag_threshold)
          useHttps                     = "false"
        }
      }]
    }
  }
}
