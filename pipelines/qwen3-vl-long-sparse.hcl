# Long-context chat with block-sparse decode attention.
#
# Each session starts from an 8k-token document (a shared system prompt) and
# then decodes a long answer: every decode token reads, per KV head, only the
# top_k pages its page-key summaries score highest (always with the first page
# and the two most recent), instead of all 130 or so pages of its context.
# Prefill stays dense. Compare with kernel = "dense" to see what sparsity buys:
#
#   go run ./cmd/flow run pipelines/qwen3-vl-long-sparse.hcl
#   go run ./cmd/flow run pipelines/qwen3-vl-long-sparse.hcl --var top_k=1000   # every page: dense results

variable "sessions" {
  default = 2
}

variable "top_k" {
  default     = 16
  description = "Pages each decode token reads per KV head (sink and recent included)."
}

model {
  preset = "qwen3-vl-2b"
  layers = 1
  seed   = 1
}

source "synthetic_chat" {
  sessions        = var.sessions
  turns           = 1
  system_tokens   = 8192
  user_tokens     = 64
  response_tokens = 64
  image_every     = 0
  prefill_chunk   = 512
  seed            = 7
}

cache {
  block_tokens = 64
  dtype        = "bf16"

  tier "host" {
    capacity = "256MiB"
  }
}

stages = ["fetch", "prefetch", "align", "attend", "evict"]

stage "attend" {
  kernel  = "block_sparse"
  top_k   = var.top_k
  recent  = 2
  threads = 2
}
