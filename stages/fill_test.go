package stages

import (
	"math"
	"testing"

	"github.com/kvflow/kvflow/model"
	"github.com/kvflow/kvflow/storage"
)

// Replayed pages are a function of their key: equal keys fill equal bytes,
// other keys or layers other bytes, every element is finite with magnitude
// in [0.5, 1), and one flipped bit fails verification.
func TestFillPage(t *testing.T) {
	for _, dt := range []model.DType{model.BF16, model.F16, model.F32} {
		page := func(b storage.BlockKey, layer int) *storage.Page {
			p := &storage.Page{Key: storage.PageKey{Block: b, Layer: layer}, K: make([]byte, 1024), V: make([]byte, 1024)}
			FillPage(p, dt)
			return p
		}
		a, a2, b, l1 := page(7, 0), page(7, 0), page(8, 0), page(7, 1)
		if string(a.K) != string(a2.K) || string(a.V) != string(a2.V) {
			t.Fatalf("%v: equal keys filled different bytes", dt)
		}
		if string(a.K) == string(b.K) || string(a.K) == string(l1.K) || string(a.K) == string(a.V) {
			t.Fatalf("%v: other keys, layers or halves filled the same bytes", dt)
		}
		vals := make([]float32, 1024/dt.Size())
		dt.Decode(vals, a.K)
		for i, v := range vals {
			if m := math.Abs(float64(v)); !(m >= 0.5 && m < 1) {
				t.Fatalf("%v: element %d = %v", dt, i, v)
			}
		}
		if err := VerifyPage(a, dt); err != nil {
			t.Fatal(err)
		}
		a.V[517] ^= 1
		if err := VerifyPage(a, dt); err == nil {
			t.Fatalf("%v: a flipped bit passed verification", dt)
		}
	}
}
