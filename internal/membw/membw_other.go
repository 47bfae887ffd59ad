//go:build !amd64

package membw

func sum32(b []byte) uint64 { return sumGo(b) }

func sumBusy(b []byte, rounds int) uint64 { return sumBusyGo(b, rounds) }
