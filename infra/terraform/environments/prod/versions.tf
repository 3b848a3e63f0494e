terraform {
  required_version = ">= 1.10.0"

  # Encrypted, locked remote state: it holds generated credentials (NATS passwords, the stages'
  # IAM access keys). Supply bucket/key/region with -backend-config=backend.hcl (see example).
  backend "s3" {
    encrypt      = true
    use_lockfile = true
  }

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0, < 7.0"
    }
    helm = {
      source  = "hashicorp/helm"
      version = ">= 3.0, < 4.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = ">= 2.36, < 4.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6, < 4.0"
    }
    jetstream = {
      source  = "nats-io/jetstream"
      version = ">= 0.4.0, < 1.0.0"
    }
  }
}

provider "aws" {
  region = var.aws_region
  default_tags {
    tags = { "app" = "videogen", "env" = "prod", "managed-by" = "terraform" }
  }
}

provider "kubernetes" {
  config_path    = var.kubeconfig
  config_context = var.kube_context
}

provider "helm" {
  kubernetes = {
    config_path    = var.kubeconfig
    config_context = var.kube_context
  }
}

# Run terraform from inside the cluster network (CI runner pod, bastion) or port-forward
# `kubectl -n nats port-forward svc/nats 4222:4222` and keep the default.
provider "jetstream" {
  servers  = var.nats_admin_url
  user     = module.nats.admin_user
  password = module.nats.admin_password
}
