# Replays the Mooncake FAST'25 conversation trace (pipelines/data, Apache-2.0;
# see pipelines/data/README.md) through kvflow's KV cache, to answer "what
# prefix hit ratio, bytes moved and stall time would this cache give?".
#
# With payload = "metadata" the cache makes its decisions over keys and sizes
# only: pages are a block's K/V over all of Qwen3-VL-8B's 36 layers (72 MiB
# per 512-token block in bf16), nothing is computed, and the whole hour of
# traffic replays in seconds. With host_capacity = "unlimited" its
# prefix_hit_ratio is the trace's ideal prefix-cache hit ratio.
#
#   go run ./cmd/flow run pipelines/mooncake-conversation.hcl
#   go run ./cmd/flow run pipelines/mooncake-conversation.hcl --var host_capacity=200GiB
#   go run ./cmd/flow run pipelines/mooncake-conversation.hcl --sweep host_capacity=64GiB,256GiB,1TiB,4TiB
#
# With payload = "full" real bytes move through the host tier and the ssd
# tier, every page loaded back is checked against its known contents, and
# decode_steps tokens per request run real attention: use a small model for
# that (override the model block, or see benchmarks/replay_test.go).

variable "trace" {
  default     = "pipelines/data/conversation_trace.jsonl"
  description = "A Mooncake-format JSONL trace."
}

variable "payload" {
  default     = "metadata"
  description = "full (pages hold bytes) or metadata (keys and sizes only)."
}

variable "host_capacity" {
  default     = "unlimited"
  description = "Host tier capacity: a size such as 8GiB, 0 (disabled) or unlimited."
}

variable "ssd_capacity" {
  default     = "0"
  description = "ssd tier capacity: a size, 0 (disabled) or unlimited."
}

variable "ssd_path" {
  default = ".flow/mooncake"
}

model {
  preset = "qwen3-vl-8b"
}

source "mooncake_trace" {
  path          = var.trace
  payload       = var.payload
  speed         = "max"
  decode_steps  = 0
  prefill_chunk = 2048
  max_active    = 16
}

cache {
  block_tokens = 512
  dtype        = "bf16"

  tier "host" {
    capacity = var.host_capacity
  }

  tier "ssd" {
    path     = var.ssd_path
    capacity = var.ssd_capacity
    write    = "write_through"
  }
}

stage "prefetch" {
  workers   = 4
  lookahead = 1
}
