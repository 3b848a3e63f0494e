# NetworkPolicies: deny everything, then allow exactly what the pipeline needs.

locals {
  private_ranges = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8"]
  part_of        = { "app.kubernetes.io/part-of" = "videogen" }
}

resource "kubernetes_network_policy_v1" "default_deny" {
  metadata {
    name      = "videogen-default-deny"
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    pod_selector {}
    policy_types = ["Ingress", "Egress"]
  }
}

resource "kubernetes_network_policy_v1" "dns" {
  metadata {
    name      = "videogen-allow-dns"
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    pod_selector {
      match_labels = local.part_of
    }
    policy_types = ["Egress"]
    egress {
      to {
        namespace_selector {
          match_labels = { "kubernetes.io/metadata.name" = var.dns.namespace }
        }
        pod_selector {
          match_labels = var.dns.labels
        }
      }
      port {
        port     = "53"
        protocol = "UDP"
      }
      port {
        port     = "53"
        protocol = "TCP"
      }
    }
  }
}

resource "kubernetes_network_policy_v1" "nats" {
  metadata {
    name      = "videogen-allow-nats"
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    pod_selector {
      match_labels = local.part_of
    }
    policy_types = ["Egress"]
    egress {
      to {
        namespace_selector {
          match_labels = { "kubernetes.io/metadata.name" = var.nats.namespace }
        }
      }
      port {
        port     = "4222"
        protocol = "TCP"
      }
    }
  }
}

resource "kubernetes_network_policy_v1" "s3" {
  metadata {
    name      = "videogen-allow-s3"
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    pod_selector {
      match_labels = local.part_of
    }
    policy_types = ["Egress"]
    egress {
      dynamic "to" {
        for_each = var.s3_network.namespace == null ? [] : [var.s3_network.namespace]
        content {
          namespace_selector {
            match_labels = { "kubernetes.io/metadata.name" = to.value }
          }
        }
      }
      dynamic "to" {
        for_each = var.s3_network.namespace == null ? var.s3_network.cidrs : []
        content {
          ip_block {
            cidr = to.value
          }
        }
      }
      port {
        port     = tostring(var.s3_network.port)
        protocol = "TCP"
      }
    }
  }
}

# preprocess (https:// inputs), webhook (client endpoints), model fetch (hub): public internet
# only. Private, link-local (cloud metadata) and CGNAT ranges stay closed: a second SSRF guard
# behind the application's own.
resource "kubernetes_network_policy_v1" "internet" {
  metadata {
    name      = "videogen-allow-internet"
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    pod_selector {
      match_labels = merge(local.part_of, { "videogen.io/internet-egress" = "true" })
    }
    policy_types = ["Egress"]
    egress {
      to {
        ip_block {
          cidr   = "0.0.0.0/0"
          except = local.private_ranges
        }
      }
    }
  }
}

resource "kubernetes_network_policy_v1" "metrics" {
  metadata {
    name      = "videogen-allow-metrics"
    namespace = var.namespace
    labels    = local.labels
  }
  spec {
    pod_selector {
      match_labels = local.part_of
    }
    policy_types = ["Ingress"]
    ingress {
      dynamic "from" {
        for_each = toset(var.metrics_namespaces)
        content {
          namespace_selector {
            match_labels = { "kubernetes.io/metadata.name" = from.value }
          }
        }
      }
      port {
        port     = tostring(local.health_port)
        protocol = "TCP"
      }
    }
  }
}
