//go:build cuda

package gpu

import (
	"fmt"
	"sync"

	"gorgonia.org/cu"

	"github.com/kvflow/kvflow/model"
)

// Attender runs a model layer's decode attention on the GPU: it implements
// model.Attender, so a model.Attention (and model.Fixture.VerifyAttender)
// can use it in place of the CPU kernel. Each call copies the queries'
// bf16 pages to the device, which suits checking the kernel, not serving;
// prefill queries and other page types go to the CPU kernel.
type Attender struct {
	d   *Decoder
	cpu *model.Kernel

	mu    sync.Mutex // serialises calls: they share the device buffers below
	pages *Buffer    // uploaded pages, grown as needed
}

// NewAttender returns the GPU attender for cfg's geometry and pages of
// blockTokens tokens.
func NewAttender(c *Context, cfg model.Config, blockTokens int) (*Attender, error) {
	d, err := NewDecoder(c, cfg.NumHeads, cfg.NumKVHeads, cfg.HeadDim, blockTokens)
	if err != nil {
		return nil, err
	}
	cpu, err := model.NewKernel(cfg, model.Options{})
	if err != nil {
		d.Close()
		return nil, err
	}
	return &Attender{d: d, cpu: cpu}, nil
}

// Close releases the attender's device memory and module.
func (a *Attender) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.pages != nil {
		a.d.c.Free(a.pages)
		a.pages = nil
	}
	return a.d.Close()
}

// Attend implements model.Attender.
func (a *Attender) Attend(qs ...model.Query) error {
	var dec []model.Query
	for _, q := range qs {
		// The GPU takes the pages laid out as its kernel reads them; any
		// other layout is the CPU kernel's.
		if len(q.Q) == a.d.heads*a.d.headDim && q.KV != nil && q.KV.DType == model.BF16 && q.KV.BlockTokens == a.d.block &&
			q.KV.KeyTileTokens() == a.d.keyTile {
			dec = append(dec, q)
		} else if err := a.cpu.Attend(q); err != nil {
			return err
		}
	}
	if len(dec) == 0 {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	pageBytes := int64(dec[0].KV.PageBytes())
	var total int64
	maxPages := 0
	for _, q := range dec {
		n := q.KV.Pages(q.Start + 1)
		if n > len(q.KV.K) || n > len(q.KV.V) {
			return fmt.Errorf("gpu: attend: %w", model.ErrShortKV)
		}
		total += 2 * int64(n) * pageBytes
		maxPages = max(maxPages, n)
	}
	if a.pages == nil || a.pages.Size < total {
		if a.pages != nil {
			a.d.c.Free(a.pages)
			a.pages = nil
		}
		buf, err := a.d.c.Alloc(total)
		if err != nil {
			return err
		}
		a.pages = buf
	}
	kt := make([][]cu.DevicePtr, len(dec))
	vt := make([][]cu.DevicePtr, len(dec))
	lens := make([]int, len(dec))
	q := make([]float32, 0, len(dec)*a.d.heads*a.d.headDim)
	off := a.pages.Ptr
	for i, d := range dec {
		n := d.KV.Pages(d.Start + 1)
		for j := range n {
			if err := a.d.c.CopyInSync(off, d.KV.K[j]); err != nil {
				return err
			}
			kt[i] = append(kt[i], off)
			off += cu.DevicePtr(pageBytes)
			if err := a.d.c.CopyInSync(off, d.KV.V[j]); err != nil {
				return err
			}
			vt[i] = append(vt[i], off)
			off += cu.DevicePtr(pageBytes)
		}
		lens[i] = d.Start + 1
		q = append(q, d.Q...)
	}
	b, err := a.d.NewBatch(len(dec), maxPages, a.d.Splits(len(dec), maxPages))
	if err != nil {
		return err
	}
	defer a.d.FreeBatch(b)
	if err := a.d.SetPages(b, kt, vt, lens); err != nil {
		return err
	}
	if err := a.d.SetQueries(b, q); err != nil {
		return err
	}
	if err := a.d.Launch(b, len(dec), nil); err != nil {
		return err
	}
	out := make([]float32, len(q))
	if err := a.d.Outputs(b, nil, out); err != nil {
		return err
	}
	for i, d := range dec {
		copy(d.Out, out[i*a.d.heads*a.d.headDim:(i+1)*a.d.heads*a.d.headDim])
	}
	return nil
}
