package model

// MRoPE positions. A text token has the same position in all three rows. An
// image (or video) grid of t×h×w language-model tokens, in row-major (t, h, w)
// order, placed where the next position would be p, gives token (ti, hi, wi)
// the positions (p+ti, p+hi, p+wi); the text after it resumes at
// p + max(t, h, w). These helpers build the rows Forward takes.

// TextPositions returns the position rows of n text tokens whose first
// position is first.
func TextPositions(first int64, n int) [3][]int64 {
	var pos [3][]int64
	for r := range pos {
		pos[r] = make([]int64, max(n, 0))
		for i := range pos[r] {
			pos[r][i] = first + int64(i)
		}
	}
	return pos
}

// ImagePositions returns the position rows of a t×h×w grid of tokens whose
// first position is first, and the position of the token that follows it.
func ImagePositions(first int64, t, h, w int) (pos [3][]int64, next int64) {
	t, h, w = max(t, 0), max(h, 0), max(w, 0)
	for r := range pos {
		pos[r] = make([]int64, 0, t*h*w)
	}
	for ti := range t {
		for hi := range h {
			for wi := range w {
				pos[0] = append(pos[0], first+int64(ti))
				pos[1] = append(pos[1], first+int64(hi))
				pos[2] = append(pos[2], first+int64(wi))
			}
		}
	}
	if t*h*w == 0 {
		return pos, first
	}
	return pos, first + int64(max(t, h, w))
}

// AppendPositions appends the rows of b to those of a and returns them.
func AppendPositions(a, b [3][]int64) [3][]int64 {
	for r := range a {
		a[r] = append(a[r], b[r]...)
	}
	return a
}
