package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/kvflow/kvflow/stages"
)

// defaultBarEvery is how often the bar is redrawn on a terminal when
// --progress is not given: the 5 s between log lines would make a bar look
// stuck.
const defaultBarEvery = time.Second

// terminal is implemented by writers that know whether they are an
// interactive terminal. Tests implement it to stand in for one; real writers
// are asked through their file descriptor (see isTerminal).
type terminal interface {
	IsTerminal() bool
}

// isTerminal tells whether w is an interactive terminal, where a bar that
// redraws itself in place can be drawn.
func isTerminal(w io.Writer) bool {
	switch w := w.(type) {
	case terminal:
		return w.IsTerminal()
	case interface{ Fd() uintptr }:
		return term.IsTerminal(int(w.Fd()))
	}
	return false
}

// console is stderr as flow run uses it: the logger's output and, on a
// terminal, the progress bar's. Log lines and the bar share one line of the
// screen, so a log line clears the bar and the bar is drawn again below it.
type console struct {
	w   io.Writer
	tty bool

	mu  sync.Mutex
	bar *progressbar.ProgressBar // the bar on screen, nil when none
}

func newConsole(w io.Writer) *console {
	return &console{w: w, tty: isTerminal(w)}
}

// Write writes log output, around the bar if one is on screen.
func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bar == nil {
		return c.w.Write(p)
	}
	// The bar's own write errors are the terminal's problem, not the log
	// line's: report only the line's.
	_ = c.bar.Clear()
	n, err := c.w.Write(p)
	_ = c.bar.RenderBlank()
	return n, err
}

// progressDisplay shows one run's progress as stages.RunOptions.OnProgress
// feeds it.
type progressDisplay interface {
	// update shows a snapshot; the run calls it from one goroutine.
	update(stages.Progress)
	// finish ends the display after the run returned. A bar is cleared,
	// so that the report on stdout starts on a clean screen line.
	finish()
}

// progressSettings are flow run's --progress flag.
type progressSettings struct {
	// every is the flag's value: 0 turns progress off.
	every time.Duration
	// explicit tells whether --progress was given: on a terminal the bar
	// is redrawn every second unless it was.
	explicit bool
}

// start picks the display for one run, a bar on a terminal and log lines
// elsewhere, and sets o's progress fields to drive it. label names the run
// (a sweep's NAME=VALUE), or is empty.
func (c *console) start(o *stages.RunOptions, log hclog.Logger, s progressSettings, label string) progressDisplay {
	o.Progress, o.OnProgress = 0, nil
	if s.every <= 0 {
		return nopDisplay{}
	}
	var d progressDisplay
	if c.tty {
		o.Progress = defaultBarEvery
		if s.explicit {
			o.Progress = s.every
		}
		d = c.newBar(label)
	} else {
		o.Progress = s.every
		d = &logDisplay{log: log, every: s.every, label: label}
	}
	o.OnProgress = d.update
	return d
}

type nopDisplay struct{}

func (nopDisplay) update(stages.Progress) {}
func (nopDisplay) finish()                {}

// logDisplay writes a log line per update, as flow run did before it drew
// bars: the form a CI log wants.
type logDisplay struct {
	log   hclog.Logger
	every time.Duration
	label string
	last  time.Duration // Elapsed of the last line logged
}

// update logs p unless the last line is under half an interval old. Ticks
// are an interval apart and pass; the run's final snapshot, which comes at
// any moment after the last tick, is dropped when it would repeat it, and a
// run shorter than half an interval logs nothing, as before.
func (d *logDisplay) update(p stages.Progress) {
	if p.Elapsed-d.last < d.every/2 {
		return
	}
	d.last = p.Elapsed
	var args []any
	if d.label != "" {
		args = append(args, "sweep", d.label)
	}
	args = append(args, "requests", p.Done, "elapsed", p.Elapsed.Round(time.Second),
		"prefix_hit_ratio", fmt.Sprintf("%.3f", p.PrefixHitRatio))
	if p.Total > 0 {
		args = append(args, "total", p.Total)
	}
	d.log.Info("progress", args...)
}

func (d *logDisplay) finish() {}

// barDisplay draws a progress bar on a terminal: requests done of total, and
// after it the prefix hit ratio so far, the rate and the ETA. Without a total
// it is a spinner with the count.
type barDisplay struct {
	c     *console
	label string
	bar   *progressbar.ProgressBar // nil until the first update
	done  bool
}

func (c *console) newBar(label string) *barDisplay {
	return &barDisplay{c: c, label: label}
}

// describe is the text after the bar. Rate and ETA are the run's averages
// from its start, not the bar's own rolling ones: requests finish in bursts
// (a turn waits for the one before it), and a rolling rate drops to zero,
// with an ETA of 0s, between them.
func (d *barDisplay) describe(p stages.Progress) string {
	var b strings.Builder
	if d.label != "" {
		b.WriteString(d.label + ": ")
	}
	fmt.Fprintf(&b, "hit %.3f", p.PrefixHitRatio)
	if secs := p.Elapsed.Seconds(); secs > 0 {
		fmt.Fprintf(&b, ", %.2f req/s", float64(p.Done)/secs)
	}
	if p.Total > 0 {
		eta := "-"
		if p.Done > 0 {
			left := float64(p.Elapsed) * float64(p.Total-p.Done) / float64(p.Done)
			eta = time.Duration(left).Round(time.Second).String()
		}
		b.WriteString(", ETA " + eta)
	}
	return b.String()
}

// newBar makes the bar. It waits for the first update because that tells
// the total, which decides between a bar and a spinner.
func (d *barDisplay) newBar(total int64) *progressbar.ProgressBar {
	n := total
	if n <= 0 {
		n = -1 // a spinner
	}
	return progressbar.NewOptions64(n,
		progressbar.OptionSetWriter(d.c.w),
		progressbar.OptionShowCount(),
		progressbar.OptionShowDescriptionAtLineEnd(),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionSetElapsedTime(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionSpinnerType(14),
		// The bar moves when the run reports, not on a timer of its
		// own: that timer would be a goroutine outliving the run.
		progressbar.OptionSetSpinnerChangeInterval(0),
		progressbar.OptionThrottle(0),
		progressbar.OptionClearOnFinish(),
	)
}

func (d *barDisplay) update(p stages.Progress) {
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	if d.done {
		return
	}
	if d.bar == nil {
		d.bar = d.newBar(p.Total)
		d.c.bar = d.bar
	}
	d.bar.Describe(d.describe(p))
	// Set64 fails only for a count beyond the total, which a run does not
	// report; the bar shows what it can.
	_ = d.bar.Set64(p.Done)
}

func (d *barDisplay) finish() {
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	d.done = true
	if d.bar == nil {
		return
	}
	_ = d.bar.Clear()
	_ = d.bar.Exit()
	if d.c.bar == d.bar {
		d.c.bar = nil
	}
}
