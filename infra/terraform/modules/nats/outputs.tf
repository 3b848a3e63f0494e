output "client_url" {
  description = "NATS URL for in-cluster clients (VIDEOGEN_NATS_URL)."
  value       = "${var.tls.enabled ? "tls" : "nats"}://${var.release_name}.${var.namespace}.svc.cluster.local:4222"
}

output "monitoring_endpoint" {
  description = "host:port of the monitoring port behind the headless Service: KEDA reaches each server as <pod>.<this>."
  value       = "${var.release_name}-headless.${var.namespace}.svc.cluster.local:8222"
}

output "account" {
  description = "NATS account the streams live in (every service user; tenants import from it)."
  value       = local.nats_service_account
}

output "stage_users" {
  description = "One least-privilege NATS user per stage (password: Secret <release>-auth, key <user>-password)."
  value       = [for s in local.stage_users : "stage-${s}"]
}

output "tls_enabled" {
  description = "Whether the client port serves TLS (clients then need VIDEOGEN_NATS_TLS_CA)."
  value       = var.tls.enabled
}

output "app_credentials_secret" {
  description = "Secret in the app namespace with VIDEOGEN_NATS_USER / VIDEOGEN_NATS_PASSWORD."
  value       = kubernetes_secret_v1.app.metadata[0].name
}

output "stage_credentials_secrets" {
  description = "stage (and runner) => Secret in the app namespace with its own VIDEOGEN_NATS_USER / VIDEOGEN_NATS_PASSWORD."
  value       = { for s, secret in kubernetes_secret_v1.stage : s => secret.metadata[0].name }
}

output "admin_user" {
  description = "NATS admin user (used by the jetstream Terraform provider)."
  value       = "admin"
}

output "admin_password" {
  description = "NATS admin password (used by the jetstream Terraform provider)."
  value       = random_password.admin.result
  sensitive   = true
}

output "release" {
  description = "Helm release, for depends_on."
  value       = helm_release.nats.id
}
