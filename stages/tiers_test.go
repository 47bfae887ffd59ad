package stages

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/kvflow/kvflow/storage"
)

// tinySSD is the tiny pipeline over a host tier of a few pages and an ssd
// tier in dir: most of what requests reuse comes back from the ssd tier.
func tinySSD(dir, write string, chain string) string { return ssdOf(tiny, dir, write, chain) }

// ssdOf is tinySSD over the pipeline base.
func ssdOf(base, dir, write string, chain string) string {
	src := strings.Replace(base, `tier "host" { capacity = "64MiB" }`, fmt.Sprintf(`tier "host" { capacity = "4KiB" }
  tier "ssd" {
    path     = %q
    capacity = "1MiB"
    write    = %q
  }`, dir, write), 1)
	return src + chain
}

func ssdPlan(t *testing.T, src string) *Plan {
	t.Helper()
	p, diags := plan(t, src, nil)
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	return p
}

// With a host tier too small to keep the prefixes, requests reuse pages
// from the ssd tier, their outputs equal a from-scratch pass, and a second
// run over the same directory starts warm.
func TestRunSSDTierServesPrefixesAndSurvivesRestart(t *testing.T) {
	for _, write := range []string{"write_back", "write_through"} {
		t.Run(write, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "kv")
			p := ssdPlan(t, tinySSD(dir, write, ""))
			rep, steps := collect(t, p)
			if len(rep.Tiers) != 2 || rep.Tiers[1].Name != "ssd" {
				t.Fatalf("tiers %+v: want host and ssd", rep.Tiers)
			}
			if rep.Lookup.StorePages == 0 || rep.Tiers[1].Hits == 0 {
				t.Fatalf("no prefix page came from the ssd tier: %+v, %+v", rep.Lookup, rep.Tiers[1])
			}
			if rep.Tiers[1].PagesWritten == 0 {
				t.Fatal("nothing reached the ssd tier")
			}
			if n := checkOutputs(t, p, steps); n == 0 {
				t.Fatal("no step computed over a cached prefix")
			}
			pf := rep.Prefetch
			if pf.Issued == 0 || pf.OnTime+pf.Late != int64(rep.Lookup.StorePages) {
				t.Fatalf("prefetch %+v: every stored prefix page (%d) must be loaded once, on time or late", pf, rep.Lookup.StorePages)
			}
			if rep.Tiers[1].ChecksumFailures != 0 || pf.Recomputed != 0 {
				t.Fatalf("checksum failures in a clean run: %+v", rep.Tiers[1])
			}

			// Restart: the first request's prefix is already on disk.
			p2 := ssdPlan(t, tinySSD(dir, write, ""))
			rep2, steps2 := collect(t, p2)
			if rep2.Tiers[1].RestoredPages == 0 {
				t.Fatal("the second run restored no pages")
			}
			if rep2.Tokens.Cached <= rep.Tokens.Cached {
				t.Fatalf("second run cached %d tokens, first %d: the restart was not warm", rep2.Tokens.Cached, rep.Tokens.Cached)
			}
			if first := steps2["s0-t0"]; len(first) == 0 || first[0].Seq.CachedTokens == 0 {
				t.Fatal("the first request of the second run found no cached prefix")
			}
			checkOutputs(t, p2, steps2)
		})
	}
}

// Pages whose stored bytes were damaged fail their checksum, are never used,
// and are recomputed: outputs are still exact.
func TestRunSSDCorruptPagesAreRecomputed(t *testing.T) {
	for name, base := range map[string]string{"rows": tiny, "tiles": tinyTiled} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "kv")
			p := ssdPlan(t, ssdOf(base, dir, "write_through", ""))
			collect(t, p)
			if n := corruptPages(t, dir, p); n == 0 {
				t.Fatal("no page to corrupt")
			}
			p2 := ssdPlan(t, ssdOf(base, dir, "write_through", ""))
			rep, steps := collect(t, p2)
			if rep.Tiers[1].ChecksumFailures == 0 || rep.Prefetch.Recomputed == 0 {
				t.Fatalf("ssd %+v, prefetch %+v: want checksum failures and recomputed pages", rep.Tiers[1], rep.Prefetch)
			}
			if checkOutputs(t, p2, steps) == 0 {
				t.Fatal("no step computed over a cached prefix")
			}
		})
	}
}

// corruptPages flips the last byte of every stored page value in dir.
func corruptPages(t *testing.T, dir string, p *Plan) int {
	t.Helper()
	db, err := badger.Open(storage.SSDBadgerOptions(dir, storage.SSDOptions{Capacity: p.SSD.Capacity}))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := 0
	err = db.Update(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte{'p'}})
		defer it.Close()
		var keys, vals [][]byte
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			v[len(v)-1] ^= 0xff
			keys, vals = append(keys, it.Item().KeyCopy(nil)), append(vals, v)
		}
		for i := range keys {
			if err := txn.Set(keys[i], vals[i]); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// Without the prefetch stage attend loads every stored page on demand and
// waits for each; with it, the loads are issued ahead.
func TestRunPrefetchOffLoadsOnDemand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "kv")
	collect(t, ssdPlan(t, tinySSD(dir, "write_through", "")))

	off := ssdPlan(t, tinySSD(dir, "write_through", `stages = ["fetch", "align", "attend", "evict"]`+"\n"))
	rep, steps := collect(t, off)
	pf := rep.Prefetch
	// Two requests may ask for one page at once: the second merges.
	if pf.Demand == 0 || int64(pf.Issued) > pf.Demand || pf.Late == 0 {
		t.Fatalf("prefetch off: %+v; want every load issued on demand, and late", pf)
	}
	checkOutputs(t, off, steps)

	on := ssdPlan(t, tinySSD(dir, "write_through", ""))
	rep, _ = collect(t, on)
	if pf := rep.Prefetch; pf.Demand != 0 || pf.Issued == 0 {
		t.Fatalf("prefetch on: %+v; want every load issued by prefetch", pf)
	}
}

func TestBuildSSDDiagnostics(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ssd := func(body string) string {
		return strings.Replace(tiny, `tier "host" { capacity = "64MiB" }`, `tier "host" { capacity = "64MiB" }
  tier "ssd" {
`+body+`
  }`, 1)
	}
	cases := []struct {
		name, src, summary string
		line, col          int
	}{
		{"capacity below a page", ssd(`    path = "` + t.TempDir() + `"
    capacity = "512B"`), "Capacity below one page", 28, 16},
		{"unwritable path", ssd(`    path = "` + filepath.Join(file, "kv") + `"
    capacity = "1MiB"`), "Unwritable path", 27, 12},
		{"bad write policy", ssd(`    path = "` + t.TempDir() + `"
    capacity = "1MiB"
    write = "write_around"`), "Invalid write policy", 29, 13},
		{"missing path", ssd(`    capacity = "1MiB"`), "Missing path", 26, 3},
		{"bad min_free", ssd(`    path = "` + t.TempDir() + `"
    capacity = "1MiB"
    min_free = "plenty"`), "Invalid min_free", 29, 16},
		{"min_free on host", strings.Replace(tiny, `tier "host" { capacity = "64MiB" }`, `tier "host" {
    capacity = "64MiB"
    min_free = "1GiB"
  }`, 1), "Unsupported argument", 27, 16},
		{"path on host", strings.Replace(tiny, `tier "host" { capacity = "64MiB" }`, `tier "host" {
    capacity = "64MiB"
    sync = true
  }`, 1), "Unsupported argument", 27, 12},
		{"no host tier", strings.Replace(tiny, `tier "host" { capacity = "64MiB" }`, `tier "ssd" {
    path = "`+t.TempDir()+`"
    capacity = "1MiB"
  }`, 1), "No host tier", 22, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, diags := plan(t, c.src, nil)
			for _, d := range diags {
				if d.Summary == c.summary {
					if d.Subject == nil || d.Subject.Start.Line != c.line || d.Subject.Start.Column != c.col {
						t.Fatalf("%q at %v, want %d:%d", c.summary, d.Subject, c.line, c.col)
					}
					return
				}
			}
			t.Fatalf("no %q diagnostic in %v", c.summary, diags)
		})
	}
}

// min_free reaches the ssd tier's options: unset the storage default (0),
// "0" no check (-1), a size itself.
func TestBuildSSDMinFree(t *testing.T) {
	for _, c := range []struct {
		attr string
		want int64
	}{{"", 0}, {`min_free = "0"`, -1}, {`min_free = "2GiB"`, 2 << 30}} {
		src := strings.Replace(tiny, `tier "host" { capacity = "64MiB" }`, `tier "host" { capacity = "64MiB" }
  tier "ssd" {
    path = "`+t.TempDir()+`"
    capacity = "1MiB"
    `+c.attr+`
  }`, 1)
		p, diags := plan(t, src, nil)
		if diags.HasErrors() {
			t.Fatalf("%q: %v", c.attr, diags)
		}
		if p.SSD == nil || p.SSD.MinFree != c.want {
			t.Errorf("%q: ssd plan %+v, want MinFree %d", c.attr, p.SSD, c.want)
		}
	}
}
