//go:build !cuda

package stages

import "errors"

// newGPUAttention fails: the default build has no CUDA. Validation rejects
// a GPU tier before a run gets here.
func newGPUAttention(p *Plan) (gpuAttention, error) {
	return nil, errors.New("gpu tier: this flow binary was built without CUDA")
}
