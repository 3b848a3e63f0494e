variable "bucket" {
  description = "Name of the videogen bucket the policies grant access to."
  type        = string
  default     = "videogen"

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket))
    error_message = "bucket must be a valid S3 bucket name."
  }
}

variable "partition" {
  description = "ARN partition: aws, aws-cn, aws-us-gov. MinIO accepts the aws partition."
  type        = string
  default     = "aws"
}
