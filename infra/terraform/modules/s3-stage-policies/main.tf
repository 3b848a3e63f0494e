# Least-privilege S3 policy documents per pipeline stage. The access model (which key patterns a
# stage reads and writes) is generated into stage_access.gen.tf from schemas/names.py by
# infra/tools/gen_infra.py; this file only turns it into IAM JSON. The minio and s3-aws modules
# use it; minio/policies/*.json hold the same statements for a local MinIO.
#
# Each statement is encoded on its own (statements have different shapes: only the list
# statement has a Condition) and the document is joined from them.

locals {
  bucket_arn = "arn:${var.partition}:s3:::${var.bucket}"

  statement_json = {
    for stage, a in local.stage_access : stage => compact([
      length(a.read) == 0 ? "" : jsonencode({
        Sid      = "ReadObjects"
        Effect   = "Allow"
        Action   = local.read_actions
        Resource = [for k in a.read : "${local.bucket_arn}/${k}"]
      }),
      length(a.write) == 0 ? "" : jsonencode({
        Sid      = "WriteObjects"
        Effect   = "Allow"
        Action   = local.write_actions
        Resource = [for k in a.write : "${local.bucket_arn}/${k}"]
      }),
      length(a.delete) == 0 ? "" : jsonencode({
        Sid      = "DeleteObjects"
        Effect   = "Allow"
        Action   = local.delete_actions
        Resource = [for k in a.delete : "${local.bucket_arn}/${k}"]
      }),
      length(a.keep) == 0 ? "" : jsonencode({
        Sid      = "KeepJobRecord"
        Effect   = "Deny"
        Action   = local.delete_actions
        Resource = [for k in a.keep : "${local.bucket_arn}/${k}"]
      }),
      length(a.list_prefixes) == 0 ? "" : jsonencode({
        Sid       = "ListJobKeys"
        Effect    = "Allow"
        Action    = local.list_actions
        Resource  = [local.bucket_arn]
        Condition = { StringLike = { "s3:prefix" = [for p in a.list_prefixes : "${p}*"] } }
      }),
      a.bucket_admin ? jsonencode({
        Sid      = "ProvisionBucket"
        Effect   = "Allow"
        Action   = local.admin_actions
        Resource = [local.bucket_arn]
      }) : "",
    ])
  }

  # Stages that get credentials at all (webhook reads and writes nothing in the bucket).
  credentialed = { for stage, s in local.statement_json : stage => s if length(s) > 0 }
}
