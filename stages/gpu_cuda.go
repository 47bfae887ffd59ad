//go:build cuda

package stages

import (
	"errors"
	"fmt"
	"sync"

	"gorgonia.org/cu"

	"github.com/kvflow/kvflow/gpu"
	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/storage"
)

// cudaAttention runs decode steps on GPU 0. Full blocks with a key are
// promoted into the device tier once and pinned while a step reads them;
// the rest (the page being written, blocks completed during decode) are
// copied into a scratch buffer for the step. Steps are serialised: they
// share the batch buffers.
type cudaAttention struct {
	ctx  *gpu.Context
	tier *storage.DeviceTier
	dec  *gpu.Decoder
	cfg  model.Config
	bt   int

	mu       sync.Mutex // guards the buffers below
	batch    *gpu.Batch
	maxPages int
	scratch  *gpu.Buffer
	out      []float32
}

func newGPUAttention(p *Plan) (gpuAttention, error) {
	ctx, err := gpu.Open(0)
	if err != nil {
		return nil, fmt.Errorf("gpu tier: %w", err)
	}
	g := &cudaAttention{ctx: ctx, cfg: p.Model, bt: p.BlockTokens}
	if g.tier, err = storage.NewDeviceTier(ctx, storage.DeviceOptions{Capacity: p.GPUCapacity}); err != nil {
		ctx.Close()
		return nil, fmt.Errorf("gpu tier: %w", err)
	}
	if g.dec, err = gpu.NewDecoder(ctx, p.Model.NumHeads, p.Model.NumKVHeads, p.Model.HeadDim, p.BlockTokens); err != nil {
		g.dec = nil // a geometry the kernel lacks: every step stays on the CPU
	}
	return g, nil
}

func (g *cudaAttention) close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.batch != nil {
		g.dec.FreeBatch(g.batch)
	}
	if g.scratch != nil {
		g.ctx.Free(g.scratch)
	}
	if g.dec != nil {
		g.dec.Close()
	}
	g.tier.Close()
	return g.ctx.Close()
}

func (g *cudaAttention) ahead(s *Step, written int) {
	if g.dec == nil || !s.Decode || s.KV == nil || s.KV.DType != model.BF16 || s.Seq.Lease == nil {
		return
	}
	// A full device tier is not an error here: attend stages what is
	// missing, or falls back to the CPU.
	s.Seq.Lease.PinDevice(fullBlocks(s, min(s.End, written)))
}

func (g *cudaAttention) device() storage.DeviceCache { return g.tier }

func (g *cudaAttention) register(mem []byte) error { return g.tier.RegisterHost(mem) }

func (g *cudaAttention) attender(s *Step, cpu *model.Kernel) model.Attender {
	if g.dec == nil || !s.Decode || s.End-s.Start != 1 || s.KV == nil || s.KV.DType != model.BF16 {
		return nil
	}
	if s.Seq.Lease != nil && s.Seq.Lease.DeviceFull() {
		return nil // the gpu tier had no room for this request: stay on the CPU
	}
	return &stepAttender{g: g, s: s, cpu: cpu}
}

// stepAttender is one decode step's attention on the GPU.
type stepAttender struct {
	g   *cudaAttention
	s   *Step
	cpu *model.Kernel
}

func (a *stepAttender) Attend(qs ...model.Query) error {
	// The GPU takes one query over pages laid out as its kernel reads them.
	if len(qs) != 1 || len(qs[0].Q) != a.g.cfg.NumHeads*a.g.cfg.HeadDim || qs[0].KV == nil ||
		qs[0].KV.KeyTileTokens() != model.KeyTileFor(a.g.cfg, model.BF16, a.g.bt) {
		return a.cpu.Attend(qs...)
	}
	q := qs[0]
	g, s, kv := a.g, a.s, q.KV
	total := q.Start + 1
	pages := kv.Pages(total)
	// Full blocks with a key go through the device tier.
	var cached []*storage.Page
	for j := 0; j < pages && (j+1)*g.bt <= total && j < len(s.Seq.Keys); j++ {
		cached = append(cached, &storage.Page{Key: storage.PageKey{Block: s.Seq.Keys[j], Layer: s.Layer}, K: kv.K[j], V: kv.V[j]})
	}
	dps, err := g.tier.Promote(cached)
	if errors.Is(err, storage.ErrNoSpace) {
		return a.cpu.Attend(qs...) // the gpu tier is full of pinned pages
	}
	if err != nil {
		return err
	}
	defer func() {
		for _, p := range cached {
			g.tier.Unpin(p.Key)
		}
	}()
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.buffers(pages, pages-len(cached), kv.PageBytes()); err != nil {
		return err
	}
	kt, vt := make([]cu.DevicePtr, pages), make([]cu.DevicePtr, pages)
	for j, dp := range dps {
		kt[j], vt[j] = dp.K, dp.V
	}
	pb := cu.DevicePtr(kv.PageBytes())
	for j := len(cached); j < pages; j++ {
		k := g.scratch.Ptr + cu.DevicePtr(2*(j-len(cached)))*pb
		if err := g.ctx.CopyInSync(k, kv.K[j]); err != nil {
			return err
		}
		if err := g.ctx.CopyInSync(k+pb, kv.V[j]); err != nil {
			return err
		}
		kt[j], vt[j] = k, k+pb
	}
	if err := g.dec.SetPages(g.batch, [][]cu.DevicePtr{kt}, [][]cu.DevicePtr{vt}, []int{total}); err != nil {
		return err
	}
	if err := g.dec.SetQueries(g.batch, q.Q); err != nil {
		return err
	}
	if err := g.dec.Launch(g.batch, 1, nil); err != nil {
		return err
	}
	return g.dec.Outputs(g.batch, nil, q.Out[:len(q.Q)])
}

// buffers makes the batch hold pages pages and the scratch buffer private
// pages; called with mu held.
func (g *cudaAttention) buffers(pages, private, pageBytes int) error {
	if g.batch == nil || pages > g.maxPages {
		if g.batch != nil {
			g.dec.FreeBatch(g.batch)
			g.batch = nil
		}
		n := max(pages, 2*g.maxPages, 64)
		b, err := g.dec.NewBatch(1, n, g.dec.Splits(1, n))
		if err != nil {
			return err
		}
		g.batch, g.maxPages = b, n
	}
	need := int64(2 * max(private, 1) * pageBytes)
	if g.scratch == nil || g.scratch.Size < need {
		if g.scratch != nil {
			g.ctx.Free(g.scratch)
			g.scratch = nil
		}
		buf, err := g.ctx.Alloc(2 * need)
		if err != nil {
			return err
		}
		g.scratch = buf
	}
	return nil
}
