//go:build amd64

package storage

func setUseAVX2(on bool) { useAVX2 = on }
