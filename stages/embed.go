package stages

import "math"

// Embed writes a synthetic hidden state for token i of r at layer into dst.
//
// kvflow models KV-cache memory, not the whole network: there is no
// embedding table or MLP, so a layer's input is a deterministic function of
// the token (its id, or its image and patch for image tokens) and the layer.
// Equal prefixes therefore produce equal K/V (positions are equal too), which
// is what makes a cached page interchangeable with a recomputed one.
func Embed(dst []float32, r *Request, i, layer int) {
	seed := uint64(uint32(r.Tokens[i]))*0x9e3779b97f4a7c15 ^ uint64(layer+1)*0xc2b2ae3d27d4eb4f
	for _, im := range r.Images {
		if i >= im.Start && i < im.Start+im.Len {
			seed ^= im.Hash ^ uint64(i-im.Start+1)*0x165667b19e3779f9
			break
		}
	}
	// Uniform in [-√3, √3): unit variance, as a normalised hidden state.
	const scale = 2 * 1.7320508075688772 / (1 << 53)
	for j := range dst {
		seed += 0x9e3779b97f4a7c15
		z := seed
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		dst[j] = float32(float64(z>>11)*scale - math.Sqrt(3))
	}
}
