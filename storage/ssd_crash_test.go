package storage

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The crash test: a child process (this test binary, running
// TestSSDCrashChild) writes pages with Sync on and acknowledges each on
// stdout once Write has returned; the parent kills it with SIGKILL at a
// random moment and checks that the tier, reopened, serves every
// acknowledged page bit-exact and never serves wrong bytes.

// ssdCrashEnv carries "dir,seed,first" to the child: the tier's directory,
// its random seed and the first block key of its new pages.
const ssdCrashEnv = "KVFLOW_SSD_CRASH_CHILD"

const (
	ssdCrashPage     = 64 << 10
	ssdCrashCapacity = 256 << 20 // never reached: no acknowledged page is evicted
	ssdCrashRounds   = 4
	ssdCrashKeys     = 1000 // block keys per round
)

func openCrashSSD(dir string) (*SSDTier, error) {
	return OpenSSDTier(SSDOptions{Dir: dir, Capacity: ssdCrashCapacity, Sync: true, Namespace: "crash"})
}

// ssdCrashKey returns the key of the child's i-th page: new keys from first
// on, and one write in four a key of an earlier round again.
func ssdCrashKey(r *rand.Rand, first, i int) PageKey {
	if first > 0 && i%4 == 3 {
		return PageKey{Block: BlockKey(r.IntN(first)), Layer: r.IntN(2)}
	}
	return PageKey{Block: BlockKey(first + i), Layer: i % 2}
}

// TestSSDCrashChild is the child of TestSSDCrash; it skips itself unless
// started by it. It writes until killed.
func TestSSDCrashChild(t *testing.T) {
	spec := os.Getenv(ssdCrashEnv)
	if spec == "" {
		t.Skip("the child of TestSSDCrash")
	}
	parts := strings.Split(spec, ",")
	if len(parts) != 3 {
		t.Fatalf("%s=%q: want dir,seed,first", ssdCrashEnv, spec)
	}
	seed, err1 := strconv.ParseUint(parts[1], 10, 64)
	first, err2 := strconv.Atoi(parts[2])
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	s, err := openCrashSSD(parts[0])
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range ssdCrashKeys {
		k := ssdCrashKey(r, first, i)
		if err := s.Write(ssdPageFor(k, ssdCrashPage)); err != nil {
			t.Fatal(err)
		}
		// Unbuffered: the line is in the pipe once Write returns.
		if _, err := fmt.Fprintf(os.Stdout, "ack %d %d\n", k.Block, k.Layer); err != nil {
			t.Fatal(err)
		}
	}
}

// parseAck parses a child's "ack <block> <layer>" line.
func parseAck(line string) (PageKey, bool) {
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "ack" {
		return PageKey{}, false
	}
	b, err1 := strconv.ParseUint(f[1], 10, 64)
	l, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil {
		return PageKey{}, false
	}
	return PageKey{Block: BlockKey(b), Layer: l}, true
}

func TestSSDCrash(t *testing.T) {
	dir := t.TempDir()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 2))
	acked := map[PageKey]bool{}
	buf := make([]byte, ssdCrashPage)
	for round := range ssdCrashRounds {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSSDCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%d,%d", ssdCrashEnv, dir, seed+uint64(round), round*ssdCrashKeys))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(out)
		// readAck reads one whole line; a line cut short by the kill has
		// no newline and does not count.
		readAck := func() (bool, error) {
			line, err := br.ReadString('\n')
			if err != nil {
				return false, err
			}
			k, ok := parseAck(line)
			if ok {
				acked[k] = true
			}
			return ok, nil
		}
		want := 5 + r.IntN(56)
		for n := 0; n < want; {
			ok, err := readAck()
			if err != nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatalf("round %d: child stopped after %d acks: %v\n%s", round, n, err, stderr.String())
			}
			if ok {
				n++
			}
		}
		time.Sleep(time.Duration(r.IntN(1000)) * time.Microsecond)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		// Whole lines written before the kill were acknowledged too: each
		// follows a Write that returned.
		extra := 0
		for {
			ok, err := readAck()
			if err != nil {
				break
			}
			if ok {
				extra++
			}
		}
		if err := cmd.Wait(); err == nil {
			t.Fatalf("round %d: child finished before it was killed", round)
		}

		s, err := openCrashSSD(dir)
		if err != nil {
			t.Fatalf("round %d: reopen after the kill: %v", round, err)
		}
		for k := range acked {
			p, err := s.Read(k, buf)
			if err != nil {
				s.Close()
				t.Fatalf("round %d: acknowledged page %s: %v", round, k, err)
			}
			checkSSDPage(t, p, k, ssdCrashPage)
		}
		// Pages written but not acknowledged may be there; if so, whole.
		bad := 0
		for _, k := range s.liveKeys() {
			p, err := s.Read(k, buf)
			switch {
			case errors.Is(err, ErrChecksum):
				bad++
			case err != nil:
				s.Close()
				t.Fatalf("round %d: page %s: %v", round, k, err)
			default:
				checkSSDPage(t, p, k, ssdCrashPage)
			}
		}
		st := s.Stats()
		t.Logf("round %d: killed after %d+%d acks; %d pages acknowledged in all, %d restored, %d failed their checksum",
			round, want, extra, len(acked), st.RestoredPages, bad)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
