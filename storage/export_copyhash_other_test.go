//go:build !amd64

package storage

func setUseAVX2(bool) {}
