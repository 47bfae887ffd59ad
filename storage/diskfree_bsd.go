//go:build darwin || freebsd || dragonfly

package storage

import "golang.org/x/sys/unix"

// diskFree returns the bytes an unprivileged writer may still use on the
// file system holding dir, and whether it could tell.
func diskFree(dir string) (uint64, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, false
	}
	// Bavail is signed on some systems and negative inside the root
	// reserve: no space for us.
	return uint64(max(int64(st.Bavail), 0)) * uint64(st.Bsize), true
}
