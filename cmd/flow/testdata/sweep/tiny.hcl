# A tiny pipeline for the sweep tests: the shape of stages' tiny pipeline,
# with the host tier's capacity a variable to sweep. A page is 1 KiB (K and V
# of 8 tokens, 2 kv heads of 16, bf16): 4KiB holds 4 pages, 1MiB all of them.
variable "host_capacity" {
  default = "64KiB"
}

variable "sessions" {
  default = 3
}

model {
  hidden_size   = 64
  heads         = 4
  kv_heads      = 2
  head_dim      = 16
  layers        = 2
  rope_theta    = 10000
  mrope_section = [4, 2, 2]
  seed          = 3
}

source "synthetic_chat" {
  sessions        = var.sessions
  turns           = 3
  system_tokens   = 40
  user_tokens     = 12
  response_tokens = 5
  image_every     = 2
  image_grid      = [1, 2, 3]
  prefill_chunk   = 16
}

cache {
  block_tokens = 8
  dtype        = "bf16"
  tier "host" { capacity = var.host_capacity }
}
