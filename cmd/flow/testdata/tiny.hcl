# A tiny pipeline for the CLI's tests.
variable "sessions" {
  default = 2
}

model {
  hidden_size   = 64
  heads         = 4
  kv_heads      = 2
  head_dim      = 16
  layers        = 2
  rope_theta    = 10000
  mrope_section = [4, 2, 2]
}

source "synthetic_chat" {
  sessions        = var.sessions
  turns           = 2
  system_tokens   = 40
  user_tokens     = 12
  response_tokens = 4
  image_grid      = [1, 2, 3]
}

cache {
  block_tokens = 8
  tier "host" { capacity = "8MiB" }
}
