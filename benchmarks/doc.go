// Package benchmarks holds benchmarks of kvflow as a whole and of its parts,
// each run beside the baseline it is compared with. Results, with the machine
// and the command, are in README.md.
package benchmarks
