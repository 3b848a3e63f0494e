terraform {
  required_version = ">= 1.9.0"

  required_providers {
    jetstream = {
      # Needs NATS Server >= 2.11 (the nats module deploys 2.14).
      source  = "nats-io/jetstream"
      version = ">= 0.4.0, < 1.0.0"
    }
  }
}
