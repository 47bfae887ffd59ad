package model

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: a
// kernel's helpers must have exited once their linger is over (goleak
// retries for a while before it fails).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
