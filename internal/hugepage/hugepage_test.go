package hugepage

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestSpan(t *testing.T) {
	for _, c := range []struct {
		start     uintptr
		n         int
		off, size int
	}{
		{0, 0, 0, 0},
		{0, Size, 0, Size},
		{0, Size - 1, 0, 0},
		{1, Size, 0, 0},               // the one huge page is not covered
		{1, 2 * Size, Size - 1, Size}, // from the next boundary
		{Size - 4096, 3*Size + 4096, 4096, 3 * Size},
		{3 * Size, 5*Size + 17, 0, 5 * Size},
		{Size, -1, 0, 0},
	} {
		off, size := Span(c.start, c.n)
		if off != c.off || size != c.size {
			t.Errorf("Span(%#x, %d) = %d, %d; want %d, %d", c.start, c.n, off, size, c.off, c.size)
		}
	}
}

// TestAdvise checks the refusals everywhere and, where the kernel has
// transparent huge pages, that the advice is taken and the memory keeps
// what is written to it. Whether huge pages were actually given depends on
// the machine's free memory, so the process's AnonHugePages is only logged.
func TestAdvise(t *testing.T) {
	if Advise(make([]byte, Size/2)) {
		t.Error("Advise took a buffer no huge page fits in")
	}
	if Advise(nil) {
		t.Error("Advise took nil")
	}
	mode, err := os.ReadFile("/sys/kernel/mm/transparent_hugepage/enabled")
	if runtime.GOOS != "linux" || err != nil || strings.Contains(string(mode), "[never]") {
		t.Skipf("no transparent huge pages here (%s, %v): only the refusals are checked", runtime.GOOS, err)
	}
	before := anonHugeKiB(t)
	b := make([]byte, 8*Size)
	if !Advise(b) {
		t.Fatalf("Advise refused %d bytes with transparent huge pages %q", len(b), strings.TrimSpace(string(mode)))
	}
	for i := 0; i < len(b); i += 4096 {
		b[i] = byte(i >> 12)
	}
	for i := 0; i < len(b); i += 4096 {
		if b[i] != byte(i>>12) {
			t.Fatalf("byte %d changed", i)
		}
	}
	// Huge pages are given when the kernel has them free; a fragmented
	// machine may give none, so this is logged, not asserted.
	t.Logf("AnonHugePages %d KiB -> %d KiB", before, anonHugeKiB(t))
	runtime.KeepAlive(b)
}

func anonHugeKiB(t *testing.T) int {
	sm, err := os.ReadFile("/proc/self/smaps_rollup")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(sm), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "AnonHugePages:" {
			n, _ := strconv.Atoi(f[1])
			return n
		}
	}
	return -1
}
