package hwtune

import (
	"fmt"
	"io"
	"strings"
)

// WriteText writes what was found, then what was derived with the reason
// for each, for people (`flow hwinfo`).
func (h *Hardware) WriteText(w io.Writer, s Settings) error {
	var b strings.Builder
	line := func(label, format string, a ...any) {
		fmt.Fprintf(&b, "  %-11s %s\n", label, fmt.Sprintf(format, a...))
	}
	c := h.CPU
	fmt.Fprintf(&b, "Hardware (%s)\n", h.Source)
	if h.Description != "" {
		line("note", "%s", h.Description)
	}
	model := c.Model
	if model == "" {
		model = "unknown"
	}
	line("cpu", "%s (%s, %s)", model, orUnknown(c.Vendor), orUnknown(h.Arch))
	tpc := ""
	if c.PhysicalCores > 0 && c.Threads%c.PhysicalCores == 0 {
		tpc = fmt.Sprintf(" (%d per core)", c.Threads/c.PhysicalCores)
	}
	line("cores", "%d physical, %d threads%s, %s, %s", c.PhysicalCores, c.Threads, tpc,
		plural(c.Sockets, "socket"), plural(c.NUMANodes, "NUMA node"))
	if c.Quota > 0 {
		line("cpu quota", "%.2f CPUs (cgroup)", c.Quota)
	}
	var caches []string
	for _, ch := range c.Caches {
		t := fmt.Sprintf("%s %s", ch.Name(), sizeText(ch.SizeBytes))
		switch {
		case ch.SharedBy > 1 && ch.Instances == 1:
			t += fmt.Sprintf(" (shared by %d threads)", ch.SharedBy)
		case ch.SharedBy > 1 && ch.Instances > 0:
			t += fmt.Sprintf(" ×%d (each shared by %d threads)", ch.Instances, ch.SharedBy)
		case ch.Instances > 0:
			t += fmt.Sprintf(" ×%d", ch.Instances)
		}
		caches = append(caches, t)
	}
	if len(caches) == 0 {
		caches = append(caches, "unknown")
	}
	line("caches", "%s; %d-byte lines", strings.Join(caches, ", "), c.LineSize)
	feat := strings.Join(c.Features, " ")
	if feat == "" {
		feat = "none of interest"
	}
	line("simd", "%s", feat)
	m := h.Memory
	if m.TotalBytes > 0 {
		mem := fmt.Sprintf("%s total, %s available", sizeText(int64(m.TotalBytes)), sizeText(int64(m.AvailableBytes)))
		if m.LimitBytes > 0 {
			mem += fmt.Sprintf(", cgroup limit %s", sizeText(int64(m.LimitBytes)))
		}
		line("memory", "%s", mem)
	} else {
		line("memory", "unknown")
	}
	line("page", "%s OS pages", sizeText(int64(h.PageSize)))
	if len(h.GPU.Devices) == 0 {
		line("gpu", "%s", h.GPU.Absent)
	}
	for _, d := range h.GPU.Devices {
		line(fmt.Sprintf("gpu %d", d.Index), "%s, SM %s, %s (%s free), PCIe gen%d x%d (max gen%d x%d), %s shared memory per block",
			d.Name, d.SM(), sizeText(int64(d.MemoryBytes)), sizeText(int64(d.FreeBytes)), d.PCIeGen, d.PCIeWidth,
			d.PCIeMaxGen, d.PCIeMaxWidth, sizeText(int64(d.SharedMemPerBlock)))
	}
	if h.GPU.Driver != "" {
		line("driver", "%s (CUDA %s)", h.GPU.Driver, orUnknown(h.GPU.CUDA))
	}
	line("bandwidth", "memory %s, disk %s, host→GPU %s", bwOrUnknown(h.MemoryBandwidth), bwOrUnknown(h.DiskBandwidth), bwOrUnknown(h.PCIeBandwidth))
	for _, warn := range h.Warnings {
		line("warning", "%s", warn)
	}
	fmt.Fprintf(&b, "\nDerived settings (explicit settings in the pipeline file win)\n")
	for _, r := range s.Reasons {
		fmt.Fprintf(&b, "  %s = %s\n      %s\n", r.Attribute, r.Text, r.Reason)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func bwOrUnknown(v float64) string {
	if v <= 0 {
		return "unknown"
	}
	return fmt.Sprintf("%.1f GB/s", v/1e9)
}
