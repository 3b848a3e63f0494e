output "endpoint" {
  description = "Regional S3 endpoint (VIDEOGEN_S3_ENDPOINT; presigned URLs use it too)."
  value       = "https://s3.${local.region}.amazonaws.com"
}

output "region" {
  description = "AWS region of the bucket."
  value       = local.region
}

output "bucket" {
  description = "Bucket name."
  value       = aws_s3_bucket.videogen.bucket
}

output "credentials_secrets" {
  description = "stage => Secret in the app namespace with VIDEOGEN_S3_ACCESS_KEY / VIDEOGEN_S3_SECRET_KEY."
  value       = { for s, sec in kubernetes_secret_v1.stage : s => sec.metadata[0].name }
}

output "network" {
  description = "What the app's egress NetworkPolicy must open (videogen module var.s3_network)."
  value       = { cidrs = ["0.0.0.0/0"], port = 443 }
}
