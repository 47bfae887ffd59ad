package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"

	"github.com/kvflow/kvflow/config"
	"github.com/kvflow/kvflow/pipeline"
	"github.com/kvflow/kvflow/stages"
)

// The files a sweep writes into its directory.
const (
	sweepCSV      = "sweep.csv"
	sweepHitPlot  = "hit_ratio.png"
	sweepStallCDF = "stall_cdf.png"
)

// sweepHeader is the header row of sweep.csv. Columns are only ever added at
// the end, so scripts that read them by position keep working.
var sweepHeader = []string{"value", "bytes", "requests", "prompt_tokens", "cached_tokens", "prefix_hit_ratio",
	"requests_per_second", "host_hit_pages", "ssd_hit_pages", "loaded_bytes", "stall_seconds", "late_loads",
	"p50_stall_ms", "p99_stall_ms", "duration_seconds"}

// sweepFlag is --sweep NAME=V1,V2,...: a variable and the values to run the
// pipeline with, in order.
type sweepFlag struct {
	name   string
	values []string
}

func (s *sweepFlag) String() string {
	if s == nil || s.name == "" {
		return ""
	}
	return s.name + "=" + strings.Join(s.values, ",")
}

func (s *sweepFlag) Set(arg string) error {
	if s.name != "" {
		return errors.New("one sweep at a time")
	}
	name, list, ok := strings.Cut(arg, "=")
	name = strings.TrimSpace(name)
	if !ok || name == "" || strings.TrimSpace(list) == "" {
		return errors.New("want NAME=V1,V2,...")
	}
	var values []string
	for v := range strings.SplitSeq(list, ",") {
		v = strings.TrimSpace(v)
		if v == "" {
			return fmt.Errorf("%s: empty value in %q", name, list)
		}
		// A value twice would make two rows of the CSV that nothing
		// tells apart.
		if slices.Contains(values, v) {
			return fmt.Errorf("%s: %s is listed twice", name, v)
		}
		values = append(values, v)
	}
	s.name, s.values = name, values
	return nil
}

// sweepJob is one flow run --sweep.
type sweepJob struct {
	path     string            // the pipeline file
	vars     map[string]string // the --var values
	sweep    sweepFlag
	out      string // --sweep-out; "" for sweep-NAME
	log      hclog.Logger
	con      *console
	progress progressSettings
}

// sweepResult is one run of a sweep that completed.
type sweepResult struct {
	value string
	// bytes is the value as a size (config.ParseSize), 0 when it is none.
	bytes  int64
	report *stages.Report
	// stallsMs are the report's per-step stalls in milliseconds, sorted.
	stallsMs []float64
}

func newSweepResult(value string, r *stages.Report) sweepResult {
	res := sweepResult{value: value, report: r, stallsMs: make([]float64, len(r.StepStalls))}
	if n, err := config.ParseSize(value); err == nil {
		res.bytes = n
	}
	for i, s := range r.StepStalls {
		res.stallsMs[i] = s * 1e3
	}
	slices.Sort(res.stallsMs)
	return res
}

// csvRow is the result's row of sweep.csv, in sweepHeader's order.
func (r sweepResult) csvRow() []string {
	rep := r.report
	f := func(x float64, prec int) string { return strconv.FormatFloat(x, 'f', prec, 64) }
	bytes := ""
	if r.bytes > 0 {
		bytes = strconv.FormatInt(r.bytes, 10)
	}
	// Quantiles of no steps are left empty rather than made up.
	p50, p99 := "", ""
	if len(r.stallsMs) > 0 {
		p50, p99 = f(quantile(r.stallsMs, 0.50), 3), f(quantile(r.stallsMs, 0.99), 3)
	}
	return []string{r.value, bytes,
		strconv.FormatInt(rep.Requests, 10),
		strconv.FormatInt(rep.Tokens.Prompt, 10),
		strconv.FormatInt(rep.Tokens.Cached, 10),
		f(rep.PrefixHitRatio, 6),
		f(r.report.RequestsPerSecond, 3),
		strconv.FormatUint(rep.Lookup.MemoryPages, 10),
		strconv.FormatUint(rep.Lookup.StorePages, 10),
		strconv.FormatUint(rep.Prefetch.LoadedBytes, 10),
		f(rep.Prefetch.StallSeconds, 6),
		strconv.FormatInt(rep.Prefetch.Late, 10),
		p50, p99,
		f(rep.DurationSeconds, 6)}
}

// quantile is the nearest-rank q-quantile of sorted, which is not empty.
func quantile(sorted []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// sweepCmd runs the pipeline once per value of the swept variable, in order,
// and writes sweep.csv, hit_ratio.png and stall_cdf.png. Every value is
// checked before the first run, so a bad one costs no run. A failed or
// interrupted run stops the sweep: the outputs then hold the runs before it.
func sweepCmd(ctx context.Context, j sweepJob, stdout, stderr io.Writer) int {
	name := j.sweep.name
	if _, set := j.vars[name]; set {
		fmt.Fprintf(stderr, "flow run: --sweep %s and --var %s: set the variable one way\n", name, name)
		return exitUsage
	}
	// When the file cannot be parsed, loading it below says why, located.
	if declared, err := declaredVariables(j.path); err == nil && !slices.Contains(declared, name) {
		list := "none"
		if len(declared) > 0 {
			list = strings.Join(declared, ", ")
		}
		fmt.Fprintf(stderr, "flow run: --sweep %s: %s declares no variable %q (declared: %s)\n", name, j.path, name, list)
		return exitUsage
	}
	plans := make([]*stages.Plan, len(j.sweep.values))
	warned := map[string]bool{}
	for i, v := range j.sweep.values {
		vars := make(map[string]string, len(j.vars)+1)
		for k, x := range j.vars {
			vars[k] = x
		}
		vars[name] = v
		plan, diags := load(j.path, vars)
		if diags.HasErrors() {
			fmt.Fprintf(stderr, "flow run: --sweep %s=%s: invalid pipeline:\n", name, v)
			writeDiags(stderr, diags)
			return exitUsage
		}
		// Every value loads the same file: say each warning once.
		var buf bytes.Buffer
		writeDiags(&buf, diags)
		for line := range strings.Lines(buf.String()) {
			if !warned[line] {
				warned[line] = true
				io.WriteString(stderr, line)
			}
		}
		plans[i] = plan
	}

	dir := j.out
	if dir == "" {
		dir = "sweep-" + name
	}
	// Create the outputs before the first run: a typo in the directory
	// should not cost a sweep.
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintf(stderr, "flow run: --sweep-out: %v\n", err)
		return exitUsage
	}
	// Plots of an earlier sweep into the same directory would pass for
	// this one's if it ends before it draws its own.
	for _, f := range []string{sweepHitPlot, sweepStallCDF} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(stderr, "flow run: --sweep-out: %v\n", err)
			return exitUsage
		}
	}
	csvPath := filepath.Join(dir, sweepCSV)
	csvFile, err := os.Create(csvPath)
	if err != nil {
		fmt.Fprintf(stderr, "flow run: --sweep-out: %v\n", err)
		return exitUsage
	}
	defer csvFile.Close()
	cw := csv.NewWriter(csvFile)
	// Rows are flushed run by run, so a sweep that dies on the way keeps
	// the rows of the runs it finished.
	writeRow := func(row []string) error {
		if err := cw.Write(row); err != nil {
			return err
		}
		cw.Flush()
		return cw.Error()
	}
	if err := writeRow(sweepHeader); err != nil {
		fmt.Fprintf(stderr, "flow run: %s: %v\n", csvPath, err)
		return exitFailed
	}

	var results []sweepResult
	var runErr, outErr error
	failed := ""
	for i, v := range j.sweep.values {
		if err := ctx.Err(); err != nil {
			runErr, failed = fmt.Errorf("interrupted: %w", err), v
			break
		}
		label := name + "=" + v
		j.log.Info("sweep run", "run", fmt.Sprintf("%d/%d", i+1, len(plans)), "value", label)
		opts := stages.RunOptions{Log: j.log}
		display := j.con.start(&opts, j.log, j.progress, label)
		report, err := plans[i].Run(ctx, opts)
		display.finish()
		plans[i] = nil // its source may hold a whole trace
		if err != nil {
			if pe, ok := errors.AsType[*pipeline.PanicError](err); ok {
				j.log.Debug("stage panicked", "stack", pe.Stack)
			}
			// The failed run's report is partial: it joins neither the
			// CSV nor the plots.
			runErr, failed = err, v
			break
		}
		res := newSweepResult(v, report)
		results = append(results, res)
		j.log.Info("sweep run done", "value", label, "prefix_hit_ratio", fmt.Sprintf("%.3f", report.PrefixHitRatio),
			"wall", fmt.Sprintf("%.2fs", report.DurationSeconds))
		if err := writeRow(res.csvRow()); err != nil {
			outErr = fmt.Errorf("%s: %w", csvPath, err)
			break
		}
	}
	if err := csvFile.Close(); err != nil && outErr == nil {
		outErr = fmt.Errorf("%s: %w", csvPath, err)
	}
	wrote := []string{csvPath}
	if len(results) > 0 && outErr == nil {
		for _, p := range []struct {
			file string
			plot func(string, string, []sweepResult) error
		}{{sweepHitPlot, plotHitRatio}, {sweepStallCDF, plotStallCDF}} {
			path := filepath.Join(dir, p.file)
			if err := p.plot(path, name, results); err != nil {
				outErr = errors.Join(outErr, fmt.Errorf("%s: %w", path, err))
				continue
			}
			wrote = append(wrote, path)
		}
	}
	if err := writeSweepTable(stdout, j.path, name, len(j.sweep.values), results); err != nil && outErr == nil {
		outErr = fmt.Errorf("writing the table: %w", err)
	}
	fmt.Fprintf(stdout, "\nwrote %s\n", strings.Join(wrote, ", "))
	code := exitOK
	if runErr != nil {
		fmt.Fprintf(stderr, "flow run: %s: --sweep %s=%s: %v\n", j.path, name, failed, runErr)
		code = exitFailed
	}
	if outErr != nil {
		fmt.Fprintf(stderr, "flow run: --sweep: %v\n", outErr)
		code = exitFailed
	}
	return code
}

// writeSweepTable prints one row per completed run.
func writeSweepTable(w io.Writer, path, name string, planned int, results []sweepResult) error {
	fmt.Fprintf(w, "kvflow sweep: %s over %s (%d of %d runs)\n\n", name, path, len(results), planned)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "%s\tprefix hit ratio\trequests/s\tstall s\tp99 stall ms\twall time\t\n", name)
	for _, r := range results {
		p99 := 0.0
		if len(r.stallsMs) > 0 {
			p99 = quantile(r.stallsMs, 0.99)
		}
		fmt.Fprintf(tw, "%s\t%.3f\t%.2f\t%.3f\t%.3f\t%.2fs\t\n", r.value, r.report.PrefixHitRatio,
			r.report.RequestsPerSecond, r.report.Prefetch.StallSeconds, p99, r.report.DurationSeconds)
	}
	return tw.Flush()
}

// declaredVariables lists the names of the variable blocks of the pipeline
// file at path, sorted. It reads the blocks' labels only, so it answers for a
// file whose required variables are not set yet.
func declaredVariables(path string) ([]string, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(src) > config.MaxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, config.MaxFileSize)
	}
	f, diags := hclsyntax.ParseConfig(src, path, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, diags
	}
	content, _, diags := f.Body.PartialContent(&hcl.BodySchema{
		Blocks: []hcl.BlockHeaderSchema{{Type: "variable", LabelNames: []string{"name"}}},
	})
	if diags.HasErrors() {
		return nil, diags
	}
	var names []string
	for _, b := range content.Blocks {
		names = append(names, b.Labels[0])
	}
	slices.Sort(names)
	return slices.Compact(names), nil
}

// sizeValues tells whether the results' values are all sizes written with a
// unit ("16MiB"; a bare "16" is more likely a count).
func sizeValues(results []sweepResult) bool {
	for _, r := range results {
		if r.bytes <= 0 {
			return false
		}
		if _, err := strconv.ParseFloat(r.value, 64); err == nil {
			return false
		}
	}
	return true
}

// recoverPlot turns a panic inside gonum/plot (it panics on some degenerate
// data) into an error, so a bad plot costs that plot and not the sweep's
// other outputs.
func recoverPlot(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("plotting: %v", r)
	}
}

// plotHitRatio plots the prefix hit ratio against the swept value, in the
// manner of Figure 9 of the Mooncake paper: capacity on a log₂ axis when the
// values are sizes, the values as categories in the order given otherwise.
func plotHitRatio(path, name string, results []sweepResult) (err error) {
	defer recoverPlot(&err)
	p := plot.New()
	p.Title.Text = "Prefix hit ratio against " + name
	p.Y.Label.Text = "prefix hit ratio"
	pts := make(plotter.XYs, len(results))
	ticks := make([]plot.Tick, len(results))
	sizes := sizeValues(results)
	for i, r := range results {
		// Sizes are plotted in GiB, as in the paper; the ticks keep the
		// values as they were written.
		x := float64(i)
		if sizes {
			x = float64(r.bytes) / (1 << 30)
		}
		pts[i] = plotter.XY{X: x, Y: r.report.PrefixHitRatio}
		ticks[i] = plot.Tick{Value: x, Label: r.value}
	}
	if sizes {
		// The line joins the points in order of capacity, however the
		// values were listed.
		slices.SortFunc(pts, func(a, b plotter.XY) int { return cmp.Compare(a.X, b.X) })
		p.X.Label.Text = name + " (log₂ scale)"
	} else {
		p.X.Label.Text = name
	}
	line, points, err := plotter.NewLinePoints(pts)
	if err != nil {
		return err
	}
	line.Color = plotutil.Color(0)
	points.Color = plotutil.Color(0)
	points.Shape = plotutil.Shape(0)
	p.Add(plotter.NewGrid(), line, points)
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	if sizes {
		// A log scale needs a positive range of some width, even for
		// one value: pad by a quarter octave on either side.
		p.X.Scale = plot.LogScale{}
		p.X.Min, p.X.Max = pts[0].X/math.Pow(2, 0.25), pts[len(pts)-1].X*math.Pow(2, 0.25)
	} else {
		p.X.Min, p.X.Max = -0.5, float64(len(results))-0.5
	}
	p.Y.Min, p.Y.Max = 0, 1
	return p.Save(6*vg.Inch, 4*vg.Inch, path)
}

// cdfPoints is at most n points of the empirical CDF of sorted, a step
// function from (sorted[0], 0); longer runs are sampled at evenly spaced
// ranks, the largest always included.
func cdfPoints(sorted []float64, n int) plotter.XYs {
	pts := plotter.XYs{{X: sorted[0], Y: 0}}
	total := len(sorted)
	k := min(n, total)
	for j := range k {
		i := (j+1)*total/k - 1
		pts = append(pts, plotter.XY{X: sorted[i], Y: float64(i+1) / float64(total)})
	}
	return pts
}

// maxCDFPoints bounds the points of each CDF line: a long run has millions of
// steps, and a 6-inch plot shows a few hundred.
const maxCDFPoints = 512

// plotStallCDF plots the CDF of the per-step stall times of every run, one
// line per swept value.
func plotStallCDF(path, name string, results []sweepResult) (err error) {
	defer recoverPlot(&err)
	p := plot.New()
	p.Title.Text = "Per-step attention stall, by " + name
	p.X.Label.Text = "stall of a computed step (ms)"
	p.Y.Label.Text = "fraction of steps"
	p.Add(plotter.NewGrid())
	p.Legend.Top = false
	p.Legend.Left = false
	for i, r := range results {
		label := name + "=" + r.value
		if len(r.stallsMs) == 0 {
			// Keep its legend entry: a run with every step cached
			// is a result too.
			label += " (no computed steps)"
		}
		l, err := plotter.NewLine(plotter.XYs{{}})
		if len(r.stallsMs) > 0 {
			l, err = plotter.NewLine(cdfPoints(r.stallsMs, maxCDFPoints))
		}
		if err != nil {
			return err
		}
		l.StepStyle = plotter.PostStep
		l.Color = plotutil.Color(i)
		l.Dashes = plotutil.Dashes(i)
		l.Width = vg.Points(1.5)
		if len(r.stallsMs) > 0 {
			p.Add(l)
		}
		p.Legend.Add(label, l)
	}
	// Stalls are never negative: start at no stall. When no step stalled
	// (no ssd tier, or every load on time) show the first millisecond.
	p.X.Min = 0
	if !(p.X.Max > 0) {
		p.X.Max = 1
	}
	p.Y.Min, p.Y.Max = 0, 1
	return p.Save(6*vg.Inch, 4*vg.Inch, path)
}
