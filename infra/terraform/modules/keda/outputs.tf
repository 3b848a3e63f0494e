output "namespace" {
  description = "Namespace KEDA runs in (admit it to the NATS monitoring port)."
  value       = var.namespace
}

output "release" {
  description = "Helm release id, for depends_on (ScaledObjects need the CRDs)."
  value       = helm_release.keda.id
}
