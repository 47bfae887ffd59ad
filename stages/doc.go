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
//     sequence, pins the longest cached prefix in the KV manager and marks
//     steps that fall entirely inside it as cached;
//   - prefetch makes the cached pages a step reads resident (with the host tier
//     alone they already are; lower tiers turn this into a load);
//   - align assembles the step's paged K/V view: cached pages, pages the request
//     computed earlier, and fresh pages for the step's new tokens;
//   - attend runs Qwen3-VL attention for the step's tokens over that view and
//     writes their K/V into it;
//   - evict commits every page the step completed to the cache, where other
//     requests can reuse it, and returns the request's pins after its last step.
//
// A Go program can register its own stage with RegisterStage and put it in a
// pipeline file's stages list; see the package example.
package stages
