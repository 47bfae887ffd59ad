# Long-context chat with block-sparse decode attention.
#
# Each session starts from a 4k-token document (a shared system prompt) and
# then decodes an answer: every decode token reads, per KV head, only the
# top_k pages its page-key summaries score highest (always with the first page
# and the two most recent), instead of all 65 or so pages of its context.
# Prefill stays dense (and is most of the run time). The report's attention
# line says what share of their context pages the decode tokens read:
#
#   go run ./cmd/flow run pipelines/qwen3-vl-long-sparse.hcl
#   go run ./cmd/flow run pipelines/qwen3-vl-long-sparse.hcl --var top_k=1000   # every page: dense results

variable "sessions" {
  default = 2
}

variable "top_k" {
  default     = 8
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
  system_tokens   = 4096
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
