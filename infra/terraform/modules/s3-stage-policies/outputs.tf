output "statement_json" {
  description = "Per stage that needs S3 access: its policy statements, each one JSON-encoded."
  value       = local.credentialed
}

output "policy_json" {
  description = "Per stage that needs S3 access: the IAM policy document (JSON)."
  value = {
    for stage, s in local.credentialed :
    stage => "{\"Version\":\"2012-10-17\",\"Statement\":[${join(",", s)}]}"
  }
}

output "deployed_stages" {
  description = "Kubernetes workloads (functions and the runner) that need S3 credentials."
  value = [
    for stage, a in local.stage_access : stage
    if a.deployed && contains(keys(local.credentialed), stage)
  ]
}

output "all_stages" {
  description = "Every stage with S3 access, including non-deployed ones (provision)."
  value       = keys(local.credentialed)
}

output "jobs_prefix" {
  description = "Key prefix of every per-job object; the lifecycle expiry rule applies to it."
  value       = local.jobs_prefix
}

output "lifecycle_rule_id" {
  description = "ID of the expiry rule (the same id runtime/storage.py writes)."
  value       = local.lifecycle_rule_id
}

output "bucket_arn" {
  description = "ARN of the bucket."
  value       = local.bucket_arn
}
