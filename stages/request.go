package stages

import (
	"fmt"
	"sync"
	"time"

	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/storage"
)

// Request is one inference request: a prompt and the tokens generated for it.
// Sources create requests; nothing changes them afterwards.
type Request struct {
	// ID names the request in errors and is the ordering key of its steps.
	ID string
	// Tokens holds the prompt followed by the response tokens; decode steps
	// run over the response.
	Tokens []int32
	// PromptLen is the number of prompt tokens at the front of Tokens.
	PromptLen int
	// Positions are the three MRoPE position rows (temporal, height, width)
	// of every token.
	Positions [3][]int64
	// Images are the runs of image tokens, whose content hashes enter the
	// keys of the blocks they fall in.
	Images []ImageRun
	// Keys, if set, are the keys of the request's full blocks as its source
	// knows them (a trace's prefix hashes): fetch uses them instead of
	// hashing the tokens. There may be fewer keys than full blocks; the
	// blocks after the last key are private to the request.
	Keys []storage.BlockKey
	// Synthetic marks a replayed request whose prompt K/V are not computed:
	// attend fills the pages of its prompt with bytes derived from each
	// block's key and layer (FillPage), and checks that every page it reads
	// from the cache holds exactly those bytes. Its decode steps run real
	// attention over them.
	Synthetic bool
	// Done, if not nil, is closed by Plan.Run once the request's last step
	// has left the chain. Sources use it to hold back work that depends on
	// the request (the chat source issues a session's next turn after it).
	// Code that runs steps through a chain of its own, without Plan.Run,
	// must close it after the last step, or such a source waits forever.
	Done chan struct{}
}

// ImageRun is a run of image tokens [Start, Start+Len) of one image.
type ImageRun struct {
	Start, Len int
	// Hash is the image's content hash.
	Hash uint64
	// Grid is the image's token grid (t, h, w) after spatial merging. It
	// enters the block keys with Hash: the same image resized to another
	// grid has other tokens and other positions after it.
	Grid [3]int
}

// Validate reports a malformed request.
func (r *Request) Validate() error {
	n := len(r.Tokens)
	switch {
	case r.ID == "":
		return fmt.Errorf("request without an id")
	case r.PromptLen < 1 || r.PromptLen > n:
		return fmt.Errorf("request %s: prompt of %d tokens, sequence of %d", r.ID, r.PromptLen, n)
	}
	for i, row := range r.Positions {
		if len(row) != n {
			return fmt.Errorf("request %s: position row %d has %d entries for %d tokens", r.ID, i, len(row), n)
		}
	}
	for _, im := range r.Images {
		if im.Start < 0 || im.Len < 1 || im.Start+im.Len > n {
			return fmt.Errorf("request %s: image run [%d,%d) outside %d tokens", r.ID, im.Start, im.Start+im.Len, n)
		}
	}
	return nil
}

// Step is one layer of one request over the token range [Start, End): a
// prefill chunk or one decode token. Stages fill in its later fields as it
// moves along the chain.
type Step struct {
	Req *Request
	Seq *Sequence
	// Index numbers the request's steps from 0.
	Index int
	Layer int
	// Start and End delimit the tokens the step computes; fetch raises
	// Start past the cached prefix.
	Start, End int
	Decode     bool
	// Last marks the request's final step.
	Last bool

	// Cached is set by fetch when every token of the step was served from
	// the cache: nothing is left to compute.
	Cached bool
	// KV is the step's paged K/V view (align); attend fills in the cached
	// pages that were still loading.
	KV *model.PagedKV
	// Stall is how long attend waited for the step's cached pages to load.
	Stall time.Duration
	// Out is the attention output, (End-Start)*hidden floats (attend).
	Out []float32
}

// String names the step in errors.
func (s *Step) String() string {
	kind := "prefill"
	if s.Decode {
		kind = "decode"
	}
	return fmt.Sprintf("request %s layer %d %s tokens [%d,%d)", s.Req.ID, s.Layer, kind, s.Start, s.End)
}

// Key is the ordering key of the step: its request.
func (s *Step) Key() string { return s.Req.ID }

// Sequence is the state a request's steps share: its block keys, the lease on
// its pages, and per layer the pages of its blocks.
type Sequence struct {
	// Keys are the chained keys of the sequence's full blocks (fetch).
	Keys []storage.BlockKey
	// CachedTokens is the length of the prefix served from the cache (fetch).
	CachedTokens int
	// Lease holds the request's pins (fetch); released after its last step.
	Lease *storage.Lease

	mu sync.Mutex
	// pages[layer][block] is the page of each block known so far: cached,
	// or allocated by align for the request's own tokens. A cached page that
	// is in the store and not loaded yet is nil. Guarded by mu.
	pages [][]*storage.Page
	// loads holds the loads prefetch issued for stored pages, until attend
	// takes their pages; issued[layer] is set once prefetch has issued the
	// layer's loads. Guarded by mu.
	loads  map[storage.PageKey]*storage.Load
	issued []bool
	// committed[layer] counts the leading blocks evict has offered to the
	// cache. Guarded by mu.
	committed []int
	// written[layer] is the number of leading tokens whose K/V are in the
	// pages: cached, or written by attend. Only blocks below it may be
	// committed, whatever order a custom chain runs the stages in. Guarded
	// by mu.
	written []int
	// sums[layer][block] is the key summary of each page for block-sparse
	// attention, kept across the request's steps so that a page is
	// summarised once. Guarded by mu.
	sums [][]*model.PageSummary
	// owned holds the pool tensors of the request's own pages, freed on
	// release: the tier keeps copies of what it stores. Guarded by mu.
	owned    []*storage.Tensor
	pool     *storage.Pool // where owned came from
	released bool          // guarded by mu
}

func newSequence(layers int) *Sequence {
	return &Sequence{pages: make([][]*storage.Page, layers), sums: make([][]*model.PageSummary, layers), committed: make([]int, layers), written: make([]int, layers),
		issued: make([]bool, layers), loads: map[storage.PageKey]*storage.Load{}}
}
