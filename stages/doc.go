// Package stages holds kvflow's built-in stages, sources and sinks, and the
// registry that maps the names used in pipeline files to them.
//
// A request is expanded into steps: one step is one layer of the request over
// a token range (a prefill chunk or one decode token). Steps flow through the
// chain
//
//	fetch → prefetch → align → attend → evict
//
// keyed by request, so the steps of one request keep their order in every
// stage while different requests run in parallel:
//
//   - fetch, on a request's first step, computes the chained block keys of the
//     sequence, pins the longest cached prefix in the KV manager (each page in
//     the host tier or the ssd tier) and marks steps that fall entirely
//     inside it as cached;
//   - prefetch issues the loads of the step's stored pages and of the
//     request's next layers, so they arrive while earlier steps compute;
//   - align assembles the step's paged K/V view: cached pages, pages the request
//     computed earlier, and fresh pages for the step's new tokens;
//   - attend takes the pages still loading (waiting only for late ones, and
//     recomputing any whose stored copy failed its checksum), then runs
//     Qwen3-VL attention for the step's tokens over the view and writes their
//     K/V into it;
//   - evict commits every page the step completed to the cache, where other
//     requests can reuse it, and returns the request's pins after its last step.
//
// A Go program can register its own stage with RegisterStage and put it in a
// pipeline file's stages list; see the package example.
package stages
