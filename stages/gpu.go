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
	// ahead promotes the full blocks of decode step s's view among its
	// first written tokens (whose K/V are final) into the device tier, so
	// that the copies run while other steps attend (align calls it;
	// attend then finds them resident).
	ahead(s *Step, written int)
	stats() storage.TierStats
	close() error
}
