terraform {
  required_version = ">= 1.9.0"

  # Dev state lives in a Secret of the dev cluster itself (encrypted at rest if the cluster
  # encrypts Secrets). Production uses an encrypted, locked S3 backend (environments/prod).
  backend "kubernetes" {
    secret_suffix = "videogen-dev"
    namespace     = "kube-system"
  }

  required_providers {
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

# Streams and consumers are managed over a NATS connection from where terraform runs:
# `kubectl -n nats port-forward svc/nats 4222:4222` (default URL below) or an in-cluster runner.
provider "jetstream" {
  servers  = var.nats_admin_url
  user     = module.nats.admin_user
  password = module.nats.admin_password
}
