package stages

import (
	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/storage"
)

// gpuAttention is the GPU side of a run with a `tier "gpu"`: decode steps
// attend on the GPU over pages cached in its device tier (L1 above the host
// tier). Only the `cuda` build has an implementation (gpu_cuda.go); in the
// default build a GPU tier never validates.
type gpuAttention interface {
	// attender returns the attention of step s on the GPU, or nil when s
	// is not a step the GPU kernel takes (prefill, a geometry or dtype it
	// lacks).
	attender(s *Step, cpu *model.Kernel) model.Attender
	// ahead pins, through the request's lease, the full blocks of decode
	// step s's view among its first written tokens (whose K/V are final)
	// in the device tier, so that their copies run while other steps
	// attend (align calls it; attend then finds them resident).
	ahead(s *Step, written int)
	// device is the tier the KV manager takes as its L1.
	device() storage.DeviceCache
	// register page-locks host memory whose pages go to the device.
	register(mem []byte) error
	close() error
}

// fullBlocks returns the pages of s's view that hold full blocks of the
// first total tokens with a key (immutable: every tier shares them by key),
// skipping pages still loading.
func fullBlocks(s *Step, total int) []*storage.Page {
	kv, bt := s.KV, s.KV.BlockTokens
	var ps []*storage.Page
	for j := 0; (j+1)*bt <= total && j < len(s.Seq.Keys) && j < len(kv.K); j++ {
		if kv.K[j] == nil || kv.V[j] == nil {
			continue
		}
		ps = append(ps, &storage.Page{Key: storage.PageKey{Block: s.Seq.Keys[j], Layer: s.Layer}, K: kv.K[j], V: kv.V[j]})
	}
	return ps
}
