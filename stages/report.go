package stages

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/pipeline"
	"github.com/kvflow/kvflow/storage"
)

// SchemaVersion is the version of the report's JSON schema. It changes when a
// key is renamed or removed or its meaning changes; new keys do not change it.
const SchemaVersion = 1

// Report is what a run did: the JSON written by `flow run --json` and the
// table printed at its end. The README documents every key.
type Report struct {
	SchemaVersion   int         `json:"schema_version"`
	Pipeline        string      `json:"pipeline"`
	Model           ModelReport `json:"model"`
	DurationSeconds float64     `json:"duration_seconds"`
	Requests        int64       `json:"requests"`
	Steps           uint64      `json:"steps"`
	Tokens          TokenReport `json:"tokens"`
	PrefixHitRatio  float64     `json:"prefix_hit_ratio"`
	TokensPerSecond float64     `json:"tokens_per_second"`
	// RequestsPerSecond is requests over the run's wall time: the replay
	// rate of a trace.
	RequestsPerSecond float64 `json:"requests_per_second"`
	// Payload is "full" or "metadata".
	Payload string `json:"payload"`
	// HitRatios are, per tier, the share of the prefix pages lookups asked
	// for that the tier served; what neither served was computed.
	HitRatios map[string]float64 `json:"hit_ratios"`
	// VerifiedPages counts pages of replayed requests loaded from the ssd
	// tier and checked against their known contents.
	VerifiedPages int64               `json:"verified_pages"`
	Pages         PageReport          `json:"pages"`
	Stages        []StageReport       `json:"stages"`
	Tiers         []storage.TierStats `json:"tiers"`
	Lookup        LookupReport        `json:"lookup"`
	Prefetch      PrefetchReport      `json:"prefetch"`
	Attention     AttentionReport     `json:"attention"`
	Memory        MemoryReport        `json:"memory"`
	// Error is the run's error, if it failed.
	Error string `json:"error,omitempty"`

	// StepStalls holds, for every step attend computed, how long it waited
	// for its pages, in seconds, in the order steps finished. It is not in
	// the JSON (a run has millions of steps); sweeps plot its distribution.
	StepStalls []float64 `json:"-"`
}

// ModelReport describes the model and page geometry of the run.
type ModelReport struct {
	Name        string `json:"name"`
	Layers      int    `json:"layers"`
	HiddenSize  int    `json:"hidden_size"`
	Heads       int    `json:"heads"`
	KVHeads     int    `json:"kv_heads"`
	HeadDim     int    `json:"head_dim"`
	DType       string `json:"dtype"`
	BlockTokens int    `json:"block_tokens"`
	PageBytes   int    `json:"page_bytes"`
}

// AttentionReport describes the attention kernel and what its decode
// tokens read (all layers): ReadShare is ReadPages over ContextPages, 1 for
// dense; IdleShare is the share of the steps' worker time (those split
// over several threads) spent waiting for the step's last item. Empty in a
// metadata run, which computes nothing.
type AttentionReport struct {
	Kernel       string  `json:"kernel"`
	Loops        string  `json:"loops"` // "avx2" or "go"
	Threads      int     `json:"threads"`
	TopK         int     `json:"top_k,omitempty"`
	Recent       int     `json:"recent,omitempty"`
	Router       string  `json:"router,omitempty"`
	DecodeTokens int64   `json:"decode_tokens"`
	ContextPages int64   `json:"context_pages"`
	ReadPages    int64   `json:"read_pages"`
	ReadShare    float64 `json:"read_share"`
	IdleShare    float64 `json:"idle_share"`
}

func attentionReport(k *model.Kernel) AttentionReport {
	if k == nil {
		return AttentionReport{}
	}
	o, st := k.Options(), k.Stats()
	r := AttentionReport{Kernel: o.Kernel, Loops: k.Loops(), Threads: max(1, o.Workers),
		DecodeTokens: st.DecodeTokens, ContextPages: st.ContextPages, ReadPages: st.ReadPages,
		ReadShare: ratio(st.ReadPages, st.ContextPages), IdleShare: ratio(st.IdleNs, st.WorkNs)}
	if r.Kernel == "" {
		r.Kernel = model.KernelDense
	}
	if r.Kernel == model.KernelBlockSparse {
		r.TopK, r.Recent, r.Router = o.TopK, k.Recent(), k.Router().Name()
	}
	return r
}

// TokenReport counts tokens: Prompt over all requests, Cached of them served
// from the prefix cache, Computed attended by the model (prefill and decode,
// each token once however many layers), Decode of them generated.
type TokenReport struct {
	Prompt   int64 `json:"prompt"`
	Cached   int64 `json:"cached"`
	Computed int64 `json:"computed"`
	Decode   int64 `json:"decode"`
}

// PageReport counts pages offered to the cache by evict.
type PageReport struct {
	Committed      int64 `json:"committed"`
	CommitFailures int64 `json:"commit_failures"`
}

// LookupReport counts where prefix lookups found their pages.
type LookupReport struct {
	// MemoryPages and StorePages are the prefix pages found in the host
	// tier and in the ssd tier; MissedBlocks counts lookups that stopped at
	// a block some layer of which no tier held.
	MemoryPages  uint64 `json:"memory_pages"`
	StorePages   uint64 `json:"store_pages"`
	MissedBlocks uint64 `json:"missed_blocks"`
	// Demoted counts pages the host tier evicted and wrote to the ssd tier
	// (write_back); DemoteDropped those the ssd tier had no room for.
	Demoted       uint64 `json:"demoted"`
	DemoteDropped uint64 `json:"demote_dropped"`
	DemoteErrors  uint64 `json:"demote_errors"`
}

// PrefetchReport describes the loads of stored pages and how they met the
// steps that needed them.
type PrefetchReport struct {
	// Issued counts loads started, Merged requests for a page already on
	// its way, Demand the loads attend issued itself (none were issued
	// for the page, as without a prefetch stage).
	Issued uint64 `json:"issued"`
	Merged uint64 `json:"merged"`
	Demand int64  `json:"demand"`
	// OnTime counts pages whose load had finished when attend needed them;
	// Late those attend waited for, StallSeconds in all.
	OnTime       int64   `json:"on_time"`
	Late         int64   `json:"late"`
	StallSeconds float64 `json:"stall_seconds"`
	// Wasted counts pages loaded into the host tier and evicted before
	// any request used them.
	Wasted uint64 `json:"wasted"`
	// Promoted counts loaded pages copied into the host tier; Private
	// those it had no room for, used by their request alone.
	Promoted    uint64 `json:"promoted"`
	Private     uint64 `json:"private"`
	LoadedBytes uint64 `json:"loaded_bytes"`
	Failed      uint64 `json:"failed"`
	// Recomputed counts pages whose stored copy failed its checksum and
	// were computed again.
	Recomputed int64 `json:"recomputed"`
}

// MemoryReport describes kvflow's own memory: the host tier's arena and the
// working pool's.
type MemoryReport struct {
	HostArena ArenaReport `json:"host_arena"`
	Pool      ArenaReport `json:"pool"`
	// PoolAllocs counts tensors the pool handed out; PoolFailures those it
	// could not.
	PoolAllocs   uint64 `json:"pool_allocs"`
	PoolFailures uint64 `json:"pool_failures"`
}

// ArenaReport is one buddy-allocated arena.
type ArenaReport struct {
	SizeBytes        int64   `json:"size_bytes"`
	UsedBytes        int64   `json:"used_bytes"`
	PeakBytes        int64   `json:"peak_bytes"`
	LargestFreeBytes int64   `json:"largest_free_bytes"`
	Fragmentation    float64 `json:"fragmentation"`
}

func arenaReport(s storage.BuddyStats) ArenaReport {
	return ArenaReport{SizeBytes: s.Size, UsedBytes: s.Used, PeakBytes: s.Peak, LargestFreeBytes: s.LargestFree, Fragmentation: s.Fragmentation}
}

// memoryReport describes the arenas; a metadata run, or one with the host
// tier disabled, has none of the host's (and a metadata run no pool).
func memoryReport(host *storage.HostTier, pool *storage.Pool) MemoryReport {
	var m MemoryReport
	if host != nil {
		m.HostArena = arenaReport(host.Arena())
	}
	if pool != nil {
		ps := pool.Stats()
		m.Pool, m.PoolAllocs, m.PoolFailures = arenaReport(ps.Arena), ps.Allocs, ps.Failures
	}
	return m
}

// StageReport is one stage's line.
type StageReport struct {
	Name             string  `json:"name"`
	Workers          int     `json:"workers"`
	Queue            int     `json:"queue"`
	Items            uint64  `json:"items"`
	Errors           uint64  `json:"errors"`
	ItemsPerSecond   float64 `json:"items_per_second"`
	BusySeconds      float64 `json:"busy_seconds"`
	QueueWaitSeconds float64 `json:"queue_wait_seconds"`
	P50Ms            float64 `json:"p50_ms"`
	P99Ms            float64 `json:"p99_ms"`
	MaxMs            float64 `json:"max_ms"`
}

func newReport(p *Plan, env *Env, metrics []pipeline.StageMetrics, mgr *storage.Manager, pf storage.PrefetchStats, mem MemoryReport, wall time.Duration) *Report {
	c := env.Counters()
	kvs := mgr.ManagerStats()
	secs := wall.Seconds()
	r := &Report{
		SchemaVersion: SchemaVersion,
		Pipeline:      p.File.Filename,
		Model: ModelReport{Name: p.ModelName, Layers: p.Model.NumLayers, HiddenSize: p.Model.HiddenSize,
			Heads: p.Model.NumHeads, KVHeads: p.Model.NumKVHeads, HeadDim: p.Model.HeadDim,
			DType: p.DType.String(), BlockTokens: p.BlockTokens, PageBytes: 2 * env.PageBytes()},
		DurationSeconds: secs,
		Requests:        c.Requests,
		Tokens:          TokenReport{Prompt: c.PromptTokens, Cached: c.CachedTokens, Computed: c.ComputedTokens, Decode: c.DecodeTokens},
		PrefixHitRatio:  ratio(c.CachedTokens, c.PromptTokens),
		Pages:           PageReport{Committed: c.CommittedPages, CommitFailures: c.CommitFailures},
		Tiers:           mgr.Stats(),
		Lookup: LookupReport{MemoryPages: kvs.MemoryPages, StorePages: kvs.StorePages, MissedBlocks: kvs.MissedBlocks,
			Demoted: kvs.Demoted, DemoteDropped: kvs.DemoteDropped, DemoteErrors: kvs.DemoteErrors},
		Prefetch: PrefetchReport{Issued: pf.Issued, Merged: pf.Merged, Demand: c.DemandLoads, OnTime: c.LoadsOnTime, Late: c.LoadsLate,
			StallSeconds: c.Stall.Seconds(), Wasted: kvs.Wasted, Promoted: kvs.Promoted, Private: kvs.PrivateLoads,
			LoadedBytes: pf.Bytes, Failed: pf.Failed, Recomputed: c.Recomputed},
		Attention: attentionReport(env.Kernel()),
		Memory:    mem,
	}
	if secs > 0 {
		r.TokensPerSecond = float64(c.ComputedTokens) / secs
		r.RequestsPerSecond = float64(c.Requests) / secs
	}
	r.Payload = "full"
	if p.Metadata {
		r.Payload = "metadata"
	}
	r.VerifiedPages = c.VerifiedPages
	r.HitRatios = map[string]float64{"host": ratio(int64(kvs.MemoryPages), c.LookupPages)}
	if st := mgr.Store(); st != nil {
		r.HitRatios[st.Name()] = ratio(int64(kvs.StorePages), c.LookupPages)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for _, m := range metrics {
		s := StageReport{Name: m.Name, Workers: m.Workers, Queue: m.Queue, Items: m.Items, Errors: m.Errors,
			BusySeconds: m.Busy.Seconds(), QueueWaitSeconds: m.QueueWait.Seconds(),
			P50Ms: ms(m.P50), P99Ms: ms(m.P99), MaxMs: ms(m.Max)}
		if secs > 0 {
			s.ItemsPerSecond = float64(m.Items) / secs
		}
		if m.Name == "report" {
			r.Steps = m.Items
		}
		r.Stages = append(r.Stages, s)
	}
	return r
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteText writes the report as readable tables.
func (r *Report) WriteText(w io.Writer) error {
	m := r.Model
	fmt.Fprintf(w, "kvflow run: %s\n", r.Pipeline)
	fmt.Fprintf(w, "model %s: %d layers, hidden %d, %d/%d heads × %d, pages of %d tokens %s (%s)\n\n",
		m.Name, m.Layers, m.HiddenSize, m.Heads, m.KVHeads, m.HeadDim, m.BlockTokens, m.DType, humanize.IBytes(uint64(m.PageBytes)))

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "stage\tworkers\titems\terrors\titems/s\tp50 ms\tp99 ms\tqueue wait s\t")
	for _, s := range r.Stages {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.1f\t%.3f\t%.3f\t%.2f\t\n",
			s.Name, s.Workers, s.Items, s.Errors, s.ItemsPerSecond, s.P50Ms, s.P99Ms, s.QueueWaitSeconds)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "tier\tcapacity\tused\tpeak\tpages\thits\tmisses\tread\tpages in\twritten\tevictions\t")
	for _, t := range r.Tiers {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%d\t%s\t%d\t\n", t.Name,
			humanize.IBytes(uint64(t.CapacityBytes)), humanize.IBytes(uint64(t.UsedBytes)), humanize.IBytes(uint64(t.PeakBytes)),
			t.Pages, t.Hits, t.Misses, humanize.IBytes(t.BytesRead), t.PagesWritten, humanize.IBytes(t.BytesWritten), t.Evictions)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "arena\tsize\tused\tpeak\tlargest free\tfragmentation\t")
	for _, a := range []struct {
		name string
		a    ArenaReport
	}{{"host tier", r.Memory.HostArena}, {"pool", r.Memory.Pool}} {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.3f\t\n", a.name, humanize.IBytes(uint64(a.a.SizeBytes)), humanize.IBytes(uint64(a.a.UsedBytes)),
			humanize.IBytes(uint64(a.a.PeakBytes)), humanize.IBytes(uint64(a.a.LargestFreeBytes)), a.a.Fragmentation)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "requests          %d (%d steps)\n", r.Requests, r.Steps)
	fmt.Fprintf(w, "prompt tokens     %d\n", r.Tokens.Prompt)
	fmt.Fprintf(w, "cached tokens     %d\n", r.Tokens.Cached)
	fmt.Fprintf(w, "prefix hit ratio  %.3f\n", r.PrefixHitRatio)
	fmt.Fprintf(w, "computed tokens   %d (%d decode)\n", r.Tokens.Computed, r.Tokens.Decode)
	fmt.Fprintf(w, "tokens/s          %.1f (%.1f requests/s)\n", r.TokensPerSecond, r.RequestsPerSecond)
	fmt.Fprintf(w, "pages committed   %d (%d kept private: tier full)\n", r.Pages.Committed, r.Pages.CommitFailures)
	if a := r.Attention; a.Kernel != "" {
		threads := "threads"
		if a.Threads == 1 {
			threads = "thread"
		}
		fmt.Fprintf(w, "attention         %s (%s loops, %d %s)", a.Kernel, a.Loops, a.Threads, threads)
		if a.Kernel == model.KernelBlockSparse {
			fmt.Fprintf(w, ", top_k %d, recent %d, %s router", a.TopK, a.Recent, a.Router)
		}
		fmt.Fprintf(w, ": decode tokens read %d of %d context pages (%.1f%%)\n", a.ReadPages, a.ContextPages, 100*a.ReadShare)
	}
	if r.hasStore() {
		pf := r.Prefetch
		fmt.Fprintf(w, "prefix pages      %d in host, %d in ssd (hit ratios %.3f, %.3f)\n", r.Lookup.MemoryPages, r.Lookup.StorePages,
			r.HitRatios["host"], r.HitRatios["ssd"])
		fmt.Fprintf(w, "loads             %d issued (%d on demand), %d on time, %d late, %d wasted, %s\n",
			pf.Issued, pf.Demand, pf.OnTime, pf.Late, pf.Wasted, humanize.IBytes(pf.LoadedBytes))
		fmt.Fprintf(w, "attend stall      %.3fs\n", pf.StallSeconds)
		if pf.Recomputed > 0 || r.Lookup.DemoteErrors > 0 {
			fmt.Fprintf(w, "recovered         %d pages recomputed (bad checksum), %d demotions failed\n", pf.Recomputed, r.Lookup.DemoteErrors)
		}
	}
	_, err := fmt.Fprintf(w, "wall time         %.2fs\n", r.DurationSeconds)
	return err
}

// hasStore reports whether the run had a store below the host tier (its
// hit ratio is reported).
func (r *Report) hasStore() bool {
	for name := range r.HitRatios {
		if name != "host" {
			return true
		}
	}
	return false
}
