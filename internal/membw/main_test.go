package membw

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: a
// Pass's readers must have returned once it is closed.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
