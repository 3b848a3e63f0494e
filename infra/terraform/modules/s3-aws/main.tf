# AWS S3 instead of MinIO: a private, KMS-encrypted, versioned bucket with an expiry rule on
# jobs/, TLS-only access, and one IAM user per pipeline stage whose group carries the stage's
# least-privilege policy (the same statements as MinIO, from s3-stage-policies). The app signs S3
# requests with static keys (runtime/storage.py passes VIDEOGEN_S3_ACCESS_KEY/SECRET_KEY
# explicitly), so each stage gets an access key in a Kubernetes Secret.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

module "policies" {
  source    = "../s3-stage-policies"
  bucket    = var.bucket
  partition = data.aws_partition.current.partition
}

locals {
  stages = module.policies.deployed_stages
  labels = {
    "app.kubernetes.io/part-of"    = "videogen"
    "app.kubernetes.io/managed-by" = "terraform"
  }
  region = data.aws_region.current.region
}

# ---- encryption key ---------------------------------------------------------------------------
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:This is a KMS key policy: Resource "*" means "this key" only. The statement is AWS's default key policy (the account administers its key through IAM); without it the key becomes unmanageable.
  #checkov:skip=CKV_AWS_111:KMS key policy: Resource "*" is the key itself and the only principal is the owning account, so every use is governed by IAM (the stage groups get just kms:Decrypt/GenerateDataKey on this key).
  #checkov:skip=CKV_AWS_356:KMS key policy: Resource "*" is the only valid resource in a key policy and denotes this key.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

resource "aws_kms_key" "bucket" {
  description             = "videogen bucket ${var.bucket}"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = var.tags
}

resource "aws_kms_alias" "bucket" {
  name          = "alias/videogen-${var.bucket}"
  target_key_id = aws_kms_key.bucket.key_id
}

# ---- bucket -----------------------------------------------------------------------------------
resource "aws_s3_bucket" "videogen" {
  #checkov:skip=CKV_AWS_144:Cross-region replication is not wanted: every object is a job artifact that expires after expire_days and can be regenerated from the job request.
  #checkov:skip=CKV2_AWS_62:No S3 event consumers: the pipeline is driven by NATS JetStream messages, never by bucket notifications.
  bucket = var.bucket
  tags   = var.tags
}

resource "aws_s3_bucket_ownership_controls" "videogen" {
  bucket = aws_s3_bucket.videogen.id
  rule {
    object_ownership = "BucketOwnerEnforced" # no ACLs
  }
}

resource "aws_s3_bucket_public_access_block" "videogen" {
  bucket                  = aws_s3_bucket.videogen.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "videogen" {
  bucket = aws_s3_bucket.videogen.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.bucket.arn
    }
    bucket_key_enabled = true
  }
}

# Versioning protects against an overwrite by a buggy stage; noncurrent versions go after a day.
resource "aws_s3_bucket_versioning" "videogen" {
  bucket = aws_s3_bucket.videogen.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "videogen" {
  bucket = aws_s3_bucket.videogen.id

  rule {
    id     = module.policies.lifecycle_rule_id
    status = "Enabled"
    filter {
      prefix = module.policies.jobs_prefix
    }
    expiration {
      days = var.expire_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  rule {
    id     = "videogen-cleanup"
    status = "Enabled"
    filter {}
    expiration {
      expired_object_delete_marker = true
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }

  depends_on = [aws_s3_bucket_versioning.videogen]
}

resource "aws_s3_bucket_logging" "videogen" {
  bucket        = aws_s3_bucket.videogen.id
  target_bucket = var.access_log_bucket
  target_prefix = "s3/${var.bucket}/"
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.videogen.arn,
      "${aws_s3_bucket.videogen.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "videogen" {
  bucket     = aws_s3_bucket.videogen.id
  policy     = data.aws_iam_policy_document.bucket.json
  depends_on = [aws_s3_bucket_public_access_block.videogen]
}

# ---- one IAM user per stage, its policy on a group ------------------------------------------
resource "aws_iam_group" "stage" {
  for_each = toset(local.stages)
  name     = "videogen-${var.bucket}-${each.key}"
  path     = var.iam_path
}

resource "aws_iam_group_policy" "stage" {
  for_each = toset(local.stages)
  name     = "videogen-${each.key}"
  group    = aws_iam_group.stage[each.key].name
  # the stage's S3 statements, plus use of the bucket key for exactly what they need
  policy = "{\"Version\":\"2012-10-17\",\"Statement\":[${join(",", concat(
    module.policies.statement_json[each.key],
    [jsonencode({
      Sid      = "BucketKey"
      Effect   = "Allow"
      Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
      Resource = [aws_kms_key.bucket.arn]
    })],
  ))}]}"
}

resource "aws_iam_user" "stage" {
  #checkov:skip=CKV_AWS_273:Workload identity for in-cluster pods, not a person: runtime/storage.py signs with explicit static keys (no web-identity/IRSA support), so a dedicated, group-scoped IAM user per stage is the least-privilege option; SSO does not apply to machines.
  for_each = toset(local.stages)
  name     = "videogen-${var.bucket}-${each.key}"
  path     = var.iam_path
  tags     = merge(var.tags, { "videogen:stage" = each.key })
}

resource "aws_iam_user_group_membership" "stage" {
  for_each = toset(local.stages)
  user     = aws_iam_user.stage[each.key].name
  groups   = [aws_iam_group.stage[each.key].name]
}

resource "aws_iam_access_key" "stage" {
  for_each = toset(local.stages)
  user     = aws_iam_user.stage[each.key].name
}

resource "kubernetes_secret_v1" "stage" {
  for_each = toset(local.stages)

  metadata {
    name      = "videogen-s3-${each.key}"
    namespace = var.app_namespace
    labels    = merge(local.labels, { "videogen.io/stage" = each.key })
  }
  data = {
    VIDEOGEN_S3_ACCESS_KEY = aws_iam_access_key.stage[each.key].id
    VIDEOGEN_S3_SECRET_KEY = aws_iam_access_key.stage[each.key].secret
  }
  type = "Opaque"
}
