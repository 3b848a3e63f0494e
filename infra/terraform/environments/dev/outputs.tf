output "nats_url" {
  description = "In-cluster NATS URL."
  value       = module.nats.client_url
}

output "s3_endpoint" {
  description = "In-cluster S3 endpoint."
  value       = module.minio.endpoint
}

output "functions" {
  description = "Function Deployments and the consumers their scalers watch."
  value       = module.videogen.functions
}

output "runners" {
  description = "Runner Deployments."
  value       = module.videogen.runners
}
