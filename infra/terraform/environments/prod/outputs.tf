output "nats_url" {
  description = "In-cluster NATS URL."
  value       = module.nats.client_url
}

output "bucket" {
  description = "Output bucket."
  value       = module.s3.bucket
}

output "functions" {
  description = "Function Deployments and the consumers their scalers watch."
  value       = module.videogen.functions
}

output "runners" {
  description = "Runner Deployments."
  value       = module.videogen.runners
}
