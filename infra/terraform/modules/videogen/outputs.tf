output "served_models" {
  description = "Models served by at least one runner (feed these to the nats-jetstream module)."
  value       = local.served_models
}

output "functions" {
  description = "Function Deployments with the stream/consumer their KEDA scaler watches."
  value       = { for k, f in local.functions : kubernetes_deployment_v1.function[k].metadata[0].name => { stream = f.stream, consumer = f.consumer } }
}

output "runners" {
  description = "Runner Deployments with their model, GPUs per pod and consumer."
  value = {
    for k, r in local.runners : kubernetes_deployment_v1.runner[k].metadata[0].name => {
      model        = r.model
      gpus_per_pod = r.gpus_per_pod
      consumer     = r.consumer
    }
  }
}

output "model_cache_claim" {
  description = "PVC holding the checkpoints (null when every served model is a tiny one)."
  value       = local.needs_model_cache ? local.model_cache_claim : null
}
