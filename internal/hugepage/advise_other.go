//go:build !linux

package hugepage

// Advise is a no-op off Linux; it reports false.
func Advise(b []byte) bool { return false }
