package model

// The kernels below are plain Go, written so that the compiler eliminates
// bounds checks (fixed-size reslicing) and the CPU overlaps independent
// multiply-adds (several accumulators). They are the hot loops of Forward.

// dot returns Σ a[i]*b[i] in float32; len(b) must be >= len(a).
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+8 <= len(a); i += 8 {
		x := a[i : i+8 : i+8]
		y := b[i : i+8 : i+8]
		s0 += x[0]*y[0] + x[4]*y[4]
		s1 += x[1]*y[1] + x[5]*y[5]
		s2 += x[2]*y[2] + x[6]*y[6]
		s3 += x[3]*y[3] + x[7]*y[7]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return (s0 + s1) + (s2 + s3)
}

// dot4 returns the dot products of w with x0..x3 (each len(w) long), reading
// w once for all four.
//
// It is exempt from the race detector (go:norace): it only reads its
// arguments, which in Forward are the immutable weights and the caller's or
// pool-private activations, and instrumenting its loads makes multi-token
// projections some 30 times slower under -race. Single-token projections and
// all attention kernels stay instrumented.
//
//go:norace
func dot4(w, x0, x1, x2, x3 []float32) (r0, r1, r2, r3 float32) {
	n := len(w)
	x0, x1, x2, x3 = x0[:n], x1[:n], x2[:n], x3[:n]
	var a0, a1, b0, b1, c0, c1, d0, d1 float32
	i := 0
	for ; i+4 <= n; i += 4 {
		ww := w[i : i+4 : i+4]
		p := x0[i : i+4 : i+4]
		q := x1[i : i+4 : i+4]
		r := x2[i : i+4 : i+4]
		s := x3[i : i+4 : i+4]
		a0 += ww[0]*p[0] + ww[2]*p[2]
		a1 += ww[1]*p[1] + ww[3]*p[3]
		b0 += ww[0]*q[0] + ww[2]*q[2]
		b1 += ww[1]*q[1] + ww[3]*q[3]
		c0 += ww[0]*r[0] + ww[2]*r[2]
		c1 += ww[1]*r[1] + ww[3]*r[3]
		d0 += ww[0]*s[0] + ww[2]*s[2]
		d1 += ww[1]*s[1] + ww[3]*s[3]
	}
	for ; i < n; i++ {
		a0 += w[i] * x0[i]
		b0 += w[i] * x1[i]
		c0 += w[i] * x2[i]
		d0 += w[i] * x3[i]
	}
	return a0 + a1, b0 + b1, c0 + c1, d0 + d1
}

// axpy computes y += a*x; len(x) must be >= len(y).
func axpy(a float32, x, y []float32) {
	x = x[:len(y)]
	i := 0
	for ; i+4 <= len(y); i += 4 {
		xx := x[i : i+4 : i+4]
		yy := y[i : i+4 : i+4]
		yy[0] += a * xx[0]
		yy[1] += a * xx[1]
		yy[2] += a * xx[2]
		yy[3] += a * xx[3]
	}
	for ; i < len(y); i++ {
		y[i] += a * x[i]
	}
}

// axpy4 computes y += a0*x0 + a1*x1 + a2*x2 + a3*x3; each x must be at
// least len(y) long.
func axpy4(a0, a1, a2, a3 float32, x0, x1, x2, x3, y []float32) {
	n := len(y)
	x0, x1, x2, x3 = x0[:n], x1[:n], x2[:n], x3[:n]
	for i := range y {
		y[i] += (a0*x0[i] + a1*x1[i]) + (a2*x2[i] + a3*x3[i])
	}
}

// scale computes y *= a.
func scale(a float32, y []float32) {
	for i := range y {
		y[i] *= a
	}
}

// linearGo computes y = x·Wᵀ for n tokens: x is [n][in], w is [out][in] and
// y is [n][out]. Weight rows are the outer loop, so each is read from memory
// once per call however many tokens there are; tokens go four at a time to
// reuse each loaded weight.
func linearGo(y, x, w []float32, n, in, out int) {
	x, y, w = x[:n*in], y[:n*out], w[:out*in]
	for r := range out {
		row := w[r*in : (r+1)*in : (r+1)*in]
		t := 0
		for ; t+4 <= n; t += 4 {
			y0, y1, y2, y3 := dot4(row, x[t*in:], x[(t+1)*in:], x[(t+2)*in:], x[(t+3)*in:])
			y[t*out+r] = y0
			y[(t+1)*out+r] = y1
			y[(t+2)*out+r] = y2
			y[(t+3)*out+r] = y3
		}
		for ; t < n; t++ {
			y[t*out+r] = dot(row, x[t*in:])
		}
	}
}
