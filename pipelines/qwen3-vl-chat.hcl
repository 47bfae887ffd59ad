# The main job: a multimodal chat workload on Qwen3-VL-2B's attention geometry.
#
# Sessions share a system prompt and come back for several turns, each turn's
# prompt repeating the conversation so far, and every second user turn carries
# an image. Prefix reuse happens across sessions (the system prompt) and across
# turns (the conversation). Two of the model's 28 layers run, with seeded
# random weights, so the job finishes in well under a minute on two cores.
#
#   go run ./cmd/flow run pipelines/qwen3-vl-chat.hcl
#   go run ./cmd/flow run pipelines/qwen3-vl-chat.hcl --var sessions=4 --json report.json

variable "sessions" {
  default     = 6
  description = "Concurrent chat sessions."
}

variable "turns" {
  default = 3
}

variable "host_capacity" {
  default     = "16MiB"
  description = "Host-memory tier capacity."
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
}

stages = ["fetch", "prefetch", "align", "attend", "evict"]

stage "fetch" {
  workers = 1
}

stage "attend" {
  kernel = "dense"
}

stage "evict" {
  policy = "lru"
}
