package config

import (
	"fmt"
	"math"
	"strings"

	"github.com/dustin/go-humanize"
)

// ParseSize parses a byte size such as "256MiB", "2GiB", "1.5GB" or "1048576".
// IEC suffixes (KiB, MiB, GiB, TiB) are powers of 1024, SI suffixes (KB, MB,
// GB, TB) powers of 1000.
func ParseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, fmt.Errorf("empty size: want a size such as %q", "2GiB")
	}
	n, err := humanize.ParseBytes(s)
	if err != nil {
		return 0, fmt.Errorf("size %q: want a size such as %q", s, "2GiB")
	}
	if n > math.MaxInt64 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	if n == 0 {
		return 0, fmt.Errorf("size %q: must be positive", s)
	}
	return int64(n), nil
}

// ParseMinFree parses the ssd tier's min_free: a size as ParseSize takes,
// or "0", which it returns as -1: no free-space check (the meaning of a
// negative storage.SSDOptions.MinFree).
func ParseMinFree(s string) (int64, error) {
	if strings.TrimSpace(s) == "0" {
		return -1, nil
	}
	return ParseSize(s)
}

// Unlimited is what ParseCapacity returns for "unlimited".
const Unlimited int64 = -1

// ParseCapacity parses a tier's capacity: a size as ParseSize takes, "0"
// (the tier is disabled) or "unlimited" (no bound, for what-if studies).
func ParseCapacity(s string) (int64, error) {
	switch strings.TrimSpace(s) {
	case "unlimited":
		return Unlimited, nil
	case "0":
		return 0, nil
	}
	return ParseSize(s)
}
