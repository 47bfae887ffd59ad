// Decode attention over paged bf16 K/V (flash-decoding): kvflow's GPU
// kernel. Compiled to PTX by nvcc (go generate ./gpu) and loaded through the
// driver API by gpu.Decoder.
//
// Page layout, as on the CPU (model.PagedKV): a V page is
// [kv_heads][block][D] bf16; a K page is [kv_heads][block/T][D][T], keys in
// tiles of T = ktile tokens stored channel by channel (T is 16 when block
// is a multiple of 16, else 1: rows).
// Inputs of one launch, for a batch of B sequences, one decode token each:
//   q      [B][H][D] float32, after q_norm and rotary
//   kpages [B][max_pages] device addresses of each sequence's K pages
//   vpages [B][max_pages] the same for V
//   lens   [B] tokens each query sees (its context, itself included)
//   ktile  T, the tokens per tile of the K pages
// decode_split computes, for each (sequence b, KV head g, split s), the
// online-softmax partials of the G = H/KVH query heads of g over split s's
// pages; decode_merge combines the splits into out [B][H][D].
//
// Every parameter is 8 bytes (pointers and long long): gorgonia.org/cu
// copies 8 bytes per kernel argument.

#include <cuda_bf16.h>

#define WARPS 4

__device__ __forceinline__ float bf16_lo(unsigned int w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf16_hi(unsigned int w) { return __uint_as_float(w & 0xffff0000u); }

// loadRow reads this lane's D/32 channels of a bf16 row into f.
template <int D>
__device__ __forceinline__ void loadRow(const unsigned short* row, int lane, float* f) {
	if (D == 128) {
		uint2 w = *reinterpret_cast<const uint2*>(row + lane * 4);
		f[0] = bf16_lo(w.x); f[1] = bf16_hi(w.x); f[2] = bf16_lo(w.y); f[3] = bf16_hi(w.y);
	} else if (D == 64) {
		unsigned int w = *reinterpret_cast<const unsigned int*>(row + lane * 2);
		f[0] = bf16_lo(w); f[1] = bf16_hi(w);
	} else { // D == 32
		f[0] = __uint_as_float(((unsigned int)row[lane]) << 16);
	}
}

// fold folds N scores sc of one query head (any past the context already
// -inf) into its online softmax state m, l, acc, with val(u, c) channel c
// of this lane's share of token u's value.
template <int N, int C, typename Val>
__device__ __forceinline__ void fold(const float (&sc)[N], float& m, float& l, float (&acc)[C], Val val) {
	float mx = m;
#pragma unroll
	for (int u = 0; u < N; u++) mx = fmaxf(mx, sc[u]);
	const float corr = __expf(m - mx); // 0 when m was -inf
	l *= corr;
#pragma unroll
	for (int c = 0; c < C; c++) acc[c] *= corr;
	m = mx;
#pragma unroll
	for (int u = 0; u < N; u++) {
		const float p = __expf(sc[u] - mx);
		l += p;
#pragma unroll
		for (int c = 0; c < C; c++) acc[c] += p * val(u, c);
	}
}

// loadRaw reads this lane's D/32 channels of a bf16 row, as loadRow, but
// leaves them packed two to a word (channel 2i low, 2i+1 high): half the
// registers while the load is in flight.
template <int D>
__device__ __forceinline__ void loadRaw(const unsigned short* row, int lane, unsigned int* w) {
	if (D == 128) {
		uint2 x = *reinterpret_cast<const uint2*>(row + lane * 4);
		w[0] = x.x; w[1] = x.y;
	} else if (D == 64) {
		w[0] = *reinterpret_cast<const unsigned int*>(row + lane * 2);
	} else { // D == 32
		w[0] = row[lane];
	}
}

// bf16At is value c of a packed pair array.
__device__ __forceinline__ float bf16At(const unsigned int* w, int c) { return (c & 1) ? bf16_hi(w[c / 2]) : bf16_lo(w[c / 2]); }

// tiles is decode_split's loop over keys in tiles of 16 tokens, [D][16]
// bf16 per tile: warp w takes the TT tokens (8 or 16: half a tile or a
// whole one) from T0 + w*TT, then every WARPS*TT-th group. A lane holds
// channels lane + 32*i of the keys, where the TT values of a channel lie
// together (one or two 16-byte loads each; whole 32-byte sectors for TT =
// 16), and channels lane*C .. lane*C+C-1 of the values (rows), as in the
// row loop. With PIPE (half tiles only) the next group's keys and values
// are loaded while this group is computed (software pipelining, as in the
// row loop); whole tiles have too many registers in flight for that.
// Slots past T1
// are read (the page holds them) and their scores set to -inf; their
// values are read from T0, any valid row, so that no NaN of an unwritten
// slot reaches acc.
template <int D, int G, int TT, bool PIPE>
__device__ __forceinline__ void tiles(const float* __restrict__ q, const unsigned long long* kp, const unsigned long long* vp,
                                      long long headOff, int T0, int T1, int blk, int shift, int warp, int lane,
                                      float scale, float (&acc)[G][D / 32], float (&m)[G], float (&l)[G]) {
	constexpr int C = D / 32;
	constexpr int VW = (C + 1) / 2; // words of a lane's value channels
	static_assert(TT == 8 || TT == 16, "a group is half a tile or a whole one");
	static_assert(!PIPE || TT == 8, "whole tiles are not pipelined");
	float qk[G][C];
#pragma unroll
	for (int h = 0; h < G; h++)
#pragma unroll
		for (int i = 0; i < C; i++) qk[h][i] = q[h * D + lane + 32 * i] * scale;
	auto load = [&](int base, unsigned int (*kw)[TT / 2], unsigned int (*vw)[VW]) {
		const int page = shift >= 0 ? (base >> shift) : (base / blk);
		const int slot = base - page * blk;
		const int j0 = slot & 15;
		const unsigned short* tile = reinterpret_cast<const unsigned short*>(kp[page]) + headOff + (long long)(slot - j0) * D;
#pragma unroll
		for (int i = 0; i < C; i++) {
			const uint4* p = reinterpret_cast<const uint4*>(tile + (lane + 32 * i) * 16 + j0);
#pragma unroll
			for (int w = 0; w < TT / 8; w++) {
				const uint4 x = p[w];
				kw[i][4 * w] = x.x; kw[i][4 * w + 1] = x.y; kw[i][4 * w + 2] = x.z; kw[i][4 * w + 3] = x.w;
			}
		}
#pragma unroll
		for (int u = 0; u < TT; u++) {
			int t = base + u;
			if (t >= T1) t = T0;
			const int pg = shift >= 0 ? (t >> shift) : (t / blk);
			loadRaw<D>(reinterpret_cast<const unsigned short*>(vp[pg]) + headOff + (long long)(t - pg * blk) * D, lane, vw[u]);
		}
	};
	unsigned int kw[C][TT / 2], vw[TT][VW];
	unsigned int kn[C][TT / 2], vn[TT][VW]; // unused without PIPE
	if (PIPE && T0 + warp * TT < T1) load(T0 + warp * TT, kw, vw);
	for (int base = T0 + warp * TT; base < T1; base += WARPS * TT) {
		if (PIPE) {
			if (base + WARPS * TT < T1) load(base + WARPS * TT, kn, vn);
		} else {
			load(base, kw, vw);
		}
		float dots[G][TT];
#pragma unroll
		for (int h = 0; h < G; h++)
#pragma unroll
			for (int u = 0; u < TT; u++) {
				float d = 0.f;
#pragma unroll
				for (int i = 0; i < C; i++) d += qk[h][i] * bf16At(kw[i], u);
				dots[h][u] = d;
			}
#pragma unroll
		for (int h = 0; h < G; h++)
#pragma unroll
			for (int u = 0; u < TT; u++)
#pragma unroll
				for (int o = 16; o > 0; o >>= 1) dots[h][u] += __shfl_xor_sync(0xffffffffu, dots[h][u], o);
#pragma unroll
		for (int h = 0; h < G; h++) {
#pragma unroll
			for (int u = 0; u < TT; u++)
				if (base + u >= T1) dots[h][u] = -INFINITY;
			fold(dots[h], m[h], l[h], acc[h], [&](int u, int c) { return bf16At(vw[u], c); });
		}
		if (PIPE) {
#pragma unroll
			for (int i = 0; i < C; i++)
#pragma unroll
				for (int w = 0; w < TT / 2; w++) kw[i][w] = kn[i][w];
#pragma unroll
			for (int u = 0; u < TT; u++)
#pragma unroll
				for (int w = 0; w < VW; w++) vw[u][w] = vn[u][w];
		}
	}
}

template <int D, int G, int UNROLL>
__device__ void decode_split(const float* __restrict__ q, const unsigned long long* __restrict__ kpages,
                             const unsigned long long* __restrict__ vpages, const long long* __restrict__ lens,
                             float* __restrict__ pm, float* __restrict__ pl, float* __restrict__ pacc,
                             long long kvh, long long block, long long maxPages, long long splits, long long ktile) {
	constexpr int C = D / 32; // channels per lane
	const int s = blockIdx.x, g = blockIdx.y, b = blockIdx.z;
	const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
	const int H = (int)kvh * G;
	const long long len = lens[b];
	const long long pages = (len + block - 1) / block;
	const long long chunk = (pages + splits - 1) / splits;
	const long long p0 = s * chunk, p1 = min(pages, p0 + chunk);
	const long long t0 = p0 * block, t1 = min(len, p1 * block);
	const float scale = rsqrtf((float)D);

	float qr[G][C], acc[G][C], m[G], l[G];
	for (int h = 0; h < G; h++) {
		const float* qh = q + ((long long)b * H + g * G + h) * D + lane * C;
		for (int c = 0; c < C; c++) { qr[h][c] = qh[c] * scale; acc[h][c] = 0.f; }
		m[h] = -INFINITY; l[h] = 0.f;
	}
	const unsigned long long* kp = kpages + b * maxPages;
	const unsigned long long* vp = vpages + b * maxPages;
	const long long headOff = (long long)g * block * D; // elements

	// Token t's row: page t >> shift (or t / block when block is not a
	// power of two) and slot t - page*block, in 32-bit arithmetic: 64-bit
	// division costs dozens of instructions per lane and token.
	const int blk = (int)block;
	const int shift = (blk & (blk - 1)) == 0 ? __ffs(blk) - 1 : -1;
	const int T0 = (int)t0, T1 = (int)t1;
	auto rowOff = [&](int t, const unsigned long long* pages) {
		const int page = shift >= 0 ? (t >> shift) : (t / blk);
		const int slot = t - page * blk;
		return reinterpret_cast<const unsigned short*>(pages[page]) + headOff + (long long)slot * D;
	};
	if (ktile == 16) {
		// u8 takes whole tiles (but for G = 8, whose scores would not
		// fit the registers), u4 half tiles pipelined, u2 half tiles.
		tiles<D, G, (UNROLL >= 8 && G <= 4) ? 16 : 8, (UNROLL == 4 || (UNROLL >= 8 && G > 4))>(q + ((long long)b * H + g * G) * D, kp, vp, headOff, T0, T1, blk, shift, warp, lane, scale, acc, m, l);
	} else {
		// Warp w takes tokens T0 + w*UNROLL + k*WARPS*UNROLL ... in groups of
		// UNROLL, loading the next group's rows before computing this one's
		// (software pipelining), so a warp always has loads in flight.
		float kf[UNROLL][C], vf[UNROLL][C], kn[UNROLL][C], vn[UNROLL][C];
		auto load = [&](int base, float (*kd)[C], float (*vd)[C]) {
#pragma unroll
			for (int u = 0; u < UNROLL; u++) {
				int t = base + u;
				if (t >= T1) t = T0; // any valid row; its weight is zeroed below
				loadRow<D>(rowOff(t, kp), lane, kd[u]);
				loadRow<D>(rowOff(t, vp), lane, vd[u]);
			}
		};
		if (T0 + warp * UNROLL < T1) load(T0 + warp * UNROLL, kf, vf);
		for (int base = T0 + warp * UNROLL; base < T1; base += WARPS * UNROLL) {
			const int nextBase = base + WARPS * UNROLL;
			if (nextBase < T1) load(nextBase, kn, vn);
			// The G×UNROLL dot products: each lane holds a partial of each,
			// then the warp sums them.
			float dots[G * UNROLL];
#pragma unroll
			for (int h = 0; h < G; h++)
#pragma unroll
				for (int u = 0; u < UNROLL; u++) {
					float d = 0.f;
#pragma unroll
					for (int c = 0; c < C; c++) d += qr[h][c] * kf[u][c];
					dots[h * UNROLL + u] = d;
				}
#pragma unroll
			for (int i = 0; i < G * UNROLL; i++)
#pragma unroll
				for (int o = 16; o > 0; o >>= 1) dots[i] += __shfl_xor_sync(0xffffffffu, dots[i], o);
#pragma unroll
			for (int h = 0; h < G; h++) {
				float sc[UNROLL];
#pragma unroll
				for (int u = 0; u < UNROLL; u++) sc[u] = (base + u < T1) ? dots[h * UNROLL + u] : -INFINITY;
				fold(sc, m[h], l[h], acc[h], [&](int u, int c) { return vf[u][c]; });
			}
#pragma unroll
			for (int u = 0; u < UNROLL; u++)
#pragma unroll
				for (int c = 0; c < C; c++) { kf[u][c] = kn[u][c]; vf[u][c] = vn[u][c]; }
		}
	}

	// Combine the warps' partials in shared memory, then write split s's.
	__shared__ float sm[WARPS][G], sl[WARPS][G], sacc[WARPS][G][D];
	for (int h = 0; h < G; h++) {
		if (lane == 0) { sm[warp][h] = m[h]; sl[warp][h] = l[h]; }
		for (int c = 0; c < C; c++) sacc[warp][h][lane * C + c] = acc[h][c];
	}
	__syncthreads();
	const long long slot0 = (((long long)b * kvh + g) * splits + s) * G;
	for (int i = threadIdx.x; i < G * D; i += WARPS * 32) {
		const int h = i / D, c = i % D;
		float M = -INFINITY;
		for (int w = 0; w < WARPS; w++) M = fmaxf(M, sm[w][h]);
		float L = 0.f, A = 0.f;
		if (M != -INFINITY) {
			for (int w = 0; w < WARPS; w++) {
				const float e = __expf(sm[w][h] - M);
				L += sl[w][h] * e;
				A += sacc[w][h][c] * e;
			}
		}
		pacc[(slot0 + h) * D + c] = A;
		if (c == 0) { pm[slot0 + h] = M; pl[slot0 + h] = L; }
	}
}

// decode_merge: one block per (b, query head); threads over D.
template <int D, int G>
__device__ void decode_merge(const float* __restrict__ pm, const float* __restrict__ pl, const float* __restrict__ pacc,
                             float* __restrict__ out, long long kvh, long long splits) {
	const int h = blockIdx.x, b = blockIdx.y;
	const int g = h / G, r = h % G;
	const int H = (int)kvh * G;
	const long long first = (((long long)b * kvh + g) * splits) * G + r; // slot of split 0, stride G
	float M = -INFINITY;
	for (long long s = 0; s < splits; s++) M = fmaxf(M, pm[first + s * G]);
	for (int c = threadIdx.x; c < D; c += blockDim.x) {
		float L = 0.f, A = 0.f;
		for (long long s = 0; s < splits; s++) {
			const long long slot = first + s * G;
			if (pl[slot] == 0.f) continue;
			const float e = __expf(pm[slot] - M);
			L += pl[slot] * e;
			A += pacc[slot * D + c] * e;
		}
		out[((long long)b * H + h) * D + c] = A / L;
	}
}

// Each warp takes U tokens at a time: their K and V rows are all loaded
// before any is used, so that many loads are in flight.
#define SPLIT(D, G, U)                                                                                           \
	extern "C" __global__ void __launch_bounds__(WARPS * 32) decode_split_d##D##_g##G##_u##U(                      \
	    const float* q, const unsigned long long* kpages, const unsigned long long* vpages, const long long* lens,   \
	    float* pm, float* pl, float* pacc, long long kvh, long long block, long long maxPages, long long splits,     \
	    long long ktile) {                                                                                           \
		decode_split<D, G, U>(q, kpages, vpages, lens, pm, pl, pacc, kvh, block, maxPages, splits, ktile);       \
	}

#define VARIANT(D, G)                                                                                            \
	SPLIT(D, G, 2)                                                                                               \
	SPLIT(D, G, 4)                                                                                               \
	SPLIT(D, G, 8)                                                                                               \
	extern "C" __global__ void decode_merge_d##D##_g##G(const float* pm, const float* pl, const float* pacc,        \
	                                                     float* out, long long kvh, long long splits) {            \
		decode_merge<D, G>(pm, pl, pacc, out, kvh, splits);                                                      \
	}

VARIANT(128, 1)
VARIANT(128, 2)
VARIANT(128, 4)
VARIANT(128, 8)
VARIANT(64, 1)
VARIANT(64, 2)
VARIANT(64, 4)
VARIANT(64, 8)
VARIANT(32, 1)
VARIANT(32, 2)
VARIANT(32, 4)
VARIANT(32, 8)
