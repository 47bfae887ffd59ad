# The chat workload of qwen3-vl-chat.hcl over two tiers: a host tier too small
# for the conversations, and an ssd tier (Badger) that keeps every page. Most
# of what a request reuses is loaded from the ssd tier; the prefetch stage
# issues those loads before the steps that read them reach attend. The ssd
# tier outlives the run: run it twice and the second run starts warm.
#
#   go run ./cmd/flow run pipelines/qwen3-vl-chat-ssd.hcl
#   go run ./cmd/flow run pipelines/qwen3-vl-chat-ssd.hcl --var ssd_path=/tmp/kv --var sync=true

variable "sessions" {
  default     = 6
  description = "Concurrent chat sessions."
}

variable "turns" {
  default = 3
}

variable "host_capacity" {
  default     = "4MiB"
  description = "Host-memory tier capacity: 16 pages of 256 KiB."
}

variable "ssd_path" {
  default     = ".flow/kv"
  description = "Directory of the ssd tier; created if missing, reused by the next run."
}

variable "ssd_capacity" {
  default = "1GiB"
}

variable "write" {
  default     = "write_through"
  description = "How pages reach the ssd tier: write_through (at once) or write_back (on eviction)."
}

variable "sync" {
  default     = false
  description = "Make every ssd write durable before it returns."
}

model {
  preset = "qwen3-vl-2b"
  layers = 2
  seed   = 1
}

source "synthetic_chat" {
  sessions        = var.sessions
  turns           = var.turns
  system_tokens   = 1024
  user_tokens     = 64
  response_tokens = 16
  image_every     = 2
  image_grid      = [1, 8, 8]
  prefill_chunk   = 256
  seed            = 7
}

cache {
  block_tokens = 64
  dtype        = "bf16"

  tier "host" {
    capacity = var.host_capacity
  }

  tier "ssd" {
    path     = var.ssd_path
    capacity = var.ssd_capacity
    write    = var.write
    sync     = var.sync
  }
}

stages = ["fetch", "prefetch", "align", "attend", "evict"]

stage "fetch" {
  workers = 1
}

stage "prefetch" {
  workers   = 4
  lookahead = 1
}

stage "attend" {
  kernel = "dense"
}

stage "evict" {
  policy = "lru"
}
