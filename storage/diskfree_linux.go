package storage

import "golang.org/x/sys/unix"

// diskFree returns the bytes an unprivileged writer may still use on the
// file system holding dir, and whether it could tell.
func diskFree(dir string) (uint64, bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, false
	}
	return st.Bavail * uint64(st.Frsize), true
}
