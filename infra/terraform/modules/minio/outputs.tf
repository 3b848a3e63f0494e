output "endpoint" {
  description = "In-cluster S3 endpoint (VIDEOGEN_S3_ENDPOINT)."
  value       = "http://${kubernetes_service_v1.api.metadata[0].name}.${var.namespace}.svc.cluster.local:9000"
}

output "region" {
  description = "Region name MinIO answers to."
  value       = "us-east-1"
}

output "bucket" {
  description = "Bucket name."
  value       = var.bucket
}

output "credentials_secrets" {
  description = "stage => Secret in the app namespace with VIDEOGEN_S3_ACCESS_KEY / VIDEOGEN_S3_SECRET_KEY."
  value       = { for s, sec in kubernetes_secret_v1.stage : s => sec.metadata[0].name }
}

output "network" {
  description = "What the app's egress NetworkPolicy must open (videogen module var.s3_network)."
  value       = { namespace = var.namespace, port = 9000 }
}
