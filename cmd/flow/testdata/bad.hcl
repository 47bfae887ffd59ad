model {
  preset = "qwen3-vl-2b"
}

source "synthetic_chat" {
  sessions = 0
}

cache {
  block_tokens = 64
  tier "host" { capacity = "1GiB" }
}
