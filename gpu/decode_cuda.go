//go:build cuda

package gpu

import (
	_ "embed"
	"encoding/binary"
	"fmt"
	"unsafe"

	"github.com/kvflow/kvflow/model"
	"gorgonia.org/cu"
)

//go:generate nvcc -ptx -arch=compute_80 -O3 kernels/decode.cu -o decode.ptx

// decodePTX is kernels/decode.cu compiled by nvcc; the driver compiles it
// for the GPU at hand when the module is loaded.
//
//go:embed decode.ptx
var decodePTX string

// Decoder runs decode attention (one new token per sequence) over bf16 K/V
// pages in device memory, laid out as on the CPU (model.PagedKV: values in
// rows, keys in tiles of model.KeyTileFor tokens, as NewPagedKV lays out
// the model's). It splits each sequence's pages among thread
// blocks and merges the partial softmax results exactly, like the CPU
// kernel's split across goroutines.
type Decoder struct {
	c                              *Context
	mod                            cu.Module
	splits                         map[string]cu.Function // by variant
	merge                          cu.Function
	heads, kvHeads, headDim, block int
	keyTile                        int // tokens per tile of the K pages
	sms                            int

	// Variant picks the split kernel: "u2", "u4" or "u8", the tokens each
	// warp loads (while it computes the previous ones) before using them.
	// SplitFactor is the thread blocks per multiprocessor Splits aims for.
	// Set them before launching.
	Variant     string
	SplitFactor int
}

// Variants lists the decode split kernels.
var Variants = []string{"u2", "u4", "u8"}

// NewDecoder loads the kernel for the geometry: head_dim 32, 64 or 128 and
// 1, 2, 4 or 8 query heads per KV head.
func NewDecoder(c *Context, heads, kvHeads, headDim, blockTokens int) (*Decoder, error) {
	if kvHeads <= 0 || heads%kvHeads != 0 || blockTokens <= 0 {
		return nil, fmt.Errorf("gpu: decoder for %d heads over %d KV heads, block %d", heads, kvHeads, blockTokens)
	}
	g := heads / kvHeads
	if (headDim != 32 && headDim != 64 && headDim != 128) || (g != 1 && g != 2 && g != 4 && g != 8) {
		return nil, fmt.Errorf("gpu: no decode kernel for head_dim %d and %d query heads per KV head (have 32, 64, 128 and 1, 2, 4, 8)", headDim, g)
	}
	cfg := model.Config{NumHeads: heads, NumKVHeads: kvHeads, HeadDim: headDim}
	d := &Decoder{c: c, heads: heads, kvHeads: kvHeads, headDim: headDim, block: blockTokens,
		keyTile: model.KeyTileFor(cfg, model.BF16, blockTokens),
		splits:  map[string]cu.Function{}, Variant: "u4", SplitFactor: 16}
	err := c.Do(func() (err error) {
		if d.mod, err = cu.LoadData(decodePTX); err != nil {
			return fmt.Errorf("loading the decode module: %w", err)
		}
		suffix := fmt.Sprintf("_d%d_g%d", headDim, g)
		for _, v := range Variants {
			f, err := d.mod.Function("decode_split" + suffix + "_" + v)
			if err != nil {
				return err
			}
			d.splits[v] = f
		}
		if d.merge, err = d.mod.Function("decode_merge" + suffix); err != nil {
			return err
		}
		d.sms, err = c.Device.Attribute(cu.MultiprocessorCount)
		return err
	})
	if err != nil {
		c.Do(func() error { return d.mod.Unload() }) // a no-op if it never loaded
		return nil, fmt.Errorf("gpu: %w", err)
	}
	return d, nil
}

// Close unloads the kernel module.
func (d *Decoder) Close() error { return d.c.Do(func() error { return d.mod.Unload() }) }

// Splits returns how many parts each sequence's pages are split into for
// a batch: enough thread blocks to fill every multiprocessor several times,
// none with fewer than two pages.
func (d *Decoder) Splits(batch, pages int) int {
	want := (max(1, d.SplitFactor)*d.sms + batch*d.kvHeads - 1) / (batch * d.kvHeads)
	return max(1, min(want, pages/2))
}

// Batch is the device memory of one decode batch: queries, page tables,
// context lengths, the splits' partials and the outputs.
type Batch struct {
	batch, maxPages, splits                  int
	q, kpages, vpages, lens, pm, pl, pacc, o *Buffer
}

// NewBatch allocates a batch of up to batch sequences of up to maxPages
// pages, each split in splits.
func (d *Decoder) NewBatch(batch, maxPages, splits int) (*Batch, error) {
	b := &Batch{batch: batch, maxPages: maxPages, splits: splits}
	slots := int64(batch * d.kvHeads * splits * (d.heads / d.kvHeads))
	for _, a := range []struct {
		dst  **Buffer
		size int64
	}{
		{&b.q, int64(batch * d.heads * d.headDim * 4)},
		{&b.kpages, int64(batch * maxPages * 8)},
		{&b.vpages, int64(batch * maxPages * 8)},
		{&b.lens, int64(batch * 8)},
		{&b.pm, slots * 4},
		{&b.pl, slots * 4},
		{&b.pacc, slots * int64(d.headDim) * 4},
		{&b.o, int64(batch * d.heads * d.headDim * 4)},
	} {
		buf, err := d.c.Alloc(a.size)
		if err != nil {
			d.FreeBatch(b)
			return nil, err
		}
		*a.dst = buf
	}
	return b, nil
}

// FreeBatch releases b's device memory.
func (d *Decoder) FreeBatch(b *Batch) {
	for _, buf := range []*Buffer{b.q, b.kpages, b.vpages, b.lens, b.pm, b.pl, b.pacc, b.o} {
		if buf != nil {
			d.c.Free(buf)
		}
	}
}

// SetPages writes the batch's page tables (the device addresses of each
// sequence's K and V pages) and context lengths.
func (d *Decoder) SetPages(b *Batch, kpages, vpages [][]cu.DevicePtr, lens []int) error {
	if len(kpages) > b.batch || len(vpages) != len(kpages) || len(lens) != len(kpages) {
		return fmt.Errorf("gpu: %d K tables, %d V tables, %d lengths for a batch of %d", len(kpages), len(vpages), len(lens), b.batch)
	}
	kt := make([]byte, b.batch*b.maxPages*8)
	vt := make([]byte, len(kt))
	ln := make([]byte, b.batch*8)
	for i := range kpages {
		need := (lens[i] + d.block - 1) / d.block
		if need > b.maxPages || len(kpages[i]) < need || len(vpages[i]) < need || lens[i] < 1 {
			return fmt.Errorf("gpu: sequence %d: %d tokens need %d pages, have %d K and %d V (batch holds %d)", i, lens[i], need, len(kpages[i]), len(vpages[i]), b.maxPages)
		}
		for j := range need {
			binary.LittleEndian.PutUint64(kt[(i*b.maxPages+j)*8:], uint64(kpages[i][j]))
			binary.LittleEndian.PutUint64(vt[(i*b.maxPages+j)*8:], uint64(vpages[i][j]))
		}
		binary.LittleEndian.PutUint64(ln[i*8:], uint64(lens[i]))
	}
	for _, c := range []struct {
		dst *Buffer
		src []byte
	}{{b.kpages, kt}, {b.vpages, vt}, {b.lens, ln}} {
		if err := d.c.CopyInSync(c.dst.Ptr, c.src); err != nil {
			return err
		}
	}
	return nil
}

// SetQueries copies the batch's queries, [sequences][heads][head_dim].
func (d *Decoder) SetQueries(b *Batch, q []float32) error {
	if len(q) > b.batch*d.heads*d.headDim {
		return fmt.Errorf("gpu: %d query floats for a batch of %d", len(q), b.batch)
	}
	return d.c.CopyInSync(b.q.Ptr, f32Bytes(q))
}

// Launch queues the kernels for the first n sequences of b on s (nil: the
// default stream).
func (d *Decoder) Launch(b *Batch, n int, s *Stream) error {
	if n < 1 || n > b.batch {
		return fmt.Errorf("gpu: launch of %d sequences on a batch of %d", n, b.batch)
	}
	q, kp, vp, ln, pm, pl, pacc, o := b.q.Ptr, b.kpages.Ptr, b.vpages.Ptr, b.lens.Ptr, b.pm.Ptr, b.pl.Ptr, b.pacc.Ptr, b.o.Ptr
	kvh, block, maxPages, splits := int64(d.kvHeads), int64(d.block), int64(b.maxPages), int64(b.splits)
	ktile := int64(d.keyTile)
	p := func(v any) unsafe.Pointer {
		switch v := v.(type) {
		case *cu.DevicePtr:
			return unsafe.Pointer(v)
		case *int64:
			return unsafe.Pointer(v)
		}
		panic("gpu: kernel argument")
	}
	split, ok := d.splits[d.Variant]
	if !ok {
		return fmt.Errorf("gpu: no decode kernel variant %q (have %v)", d.Variant, Variants)
	}
	return d.c.Do(func() error {
		if err := split.Launch(b.splits, d.kvHeads, n, 128, 1, 1, 0, stream(s),
			[]unsafe.Pointer{p(&q), p(&kp), p(&vp), p(&ln), p(&pm), p(&pl), p(&pacc), p(&kvh), p(&block), p(&maxPages), p(&splits), p(&ktile)}); err != nil {
			return fmt.Errorf("decode_split: %w", err)
		}
		if err := d.merge.Launch(d.heads, n, 1, min(d.headDim, 128), 1, 1, 0, stream(s),
			[]unsafe.Pointer{p(&pm), p(&pl), p(&pacc), p(&o), p(&kvh), p(&splits)}); err != nil {
			return fmt.Errorf("decode_merge: %w", err)
		}
		return nil
	})
}

// Outputs waits for the work on s and copies the first len(out) output
// floats, [sequences][heads][head_dim].
func (d *Decoder) Outputs(b *Batch, s *Stream, out []float32) error {
	if s != nil {
		if err := d.c.Sync(s); err != nil {
			return err
		}
	}
	return d.c.CopyOutSync(f32Bytes(out), b.o.Ptr)
}

// f32Bytes views floats as their little-endian bytes.
func f32Bytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))
}
