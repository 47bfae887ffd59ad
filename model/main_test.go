package model

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if any test leaves a goroutine behind: the
// kernel's workers must all have returned when Attend does.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
