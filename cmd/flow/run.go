package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hashicorp/hcl/v2"

	"github.com/kvflow/kvflow/config"
	"github.com/kvflow/kvflow/pipeline"
	"github.com/kvflow/kvflow/stages"
)

func runCmd(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("run", stderr)
	vars := varsFlag{}
	fs.Var(vars, "var", "set a variable: name=value (repeatable)")
	jsonPath := fs.String("json", "", "also write the report as JSON to `PATH`")
	level := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	progress := fs.Duration("progress", 5*time.Second,
		"interval of progress lines on stderr, or of the progress bar's redraws on a terminal (1s there unless given); 0: none")
	var sweep sweepFlag
	fs.Var(&sweep, "sweep", "run once per value of a variable: `NAME=V1,V2,...`")
	sweepOut := fs.String("sweep-out", "", "directory of the sweep's CSV and plots (default sweep-NAME)")
	pos, err := parse(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "flow run: want one pipeline file, got %d\n%s", len(pos), usage)
		return exitUsage
	}
	// Logs go through the console, which keeps them clear of the
	// progress bar on a terminal.
	con := newConsole(stderr)
	log, err := newLogger(con, *level)
	if err != nil {
		fmt.Fprintf(stderr, "flow run: %v\n", err)
		return exitUsage
	}
	if *progress != 0 && *progress < 100*time.Millisecond {
		fmt.Fprintf(stderr, "flow run: --progress %v: want 0 (none) or at least 100ms\n", *progress)
		return exitUsage
	}
	prog := progressSettings{every: *progress, explicit: given(fs, "progress")}
	if sweep.name != "" {
		if *jsonPath != "" {
			fmt.Fprintf(stderr, "flow run: --json and --sweep: a sweep writes its results to --sweep-out\n")
			return exitUsage
		}
		return sweepCmd(ctx, sweepJob{path: pos[0], vars: vars, sweep: sweep, out: *sweepOut, log: log, con: con, progress: prog},
			stdout, stderr)
	}
	if *sweepOut != "" {
		fmt.Fprintf(stderr, "flow run: --sweep-out needs --sweep\n")
		return exitUsage
	}
	plan, diags := load(pos[0], vars)
	writeDiags(stderr, diags)
	if diags.HasErrors() {
		return exitUsage
	}
	var jsonFile *os.File
	if *jsonPath != "" {
		// Open it now: a typo in the path should not cost a whole run.
		if jsonFile, err = os.Create(*jsonPath); err != nil {
			fmt.Fprintf(stderr, "flow run: --json: %v\n", err)
			return exitUsage
		}
		defer jsonFile.Close()
	}
	log.Info("running", "pipeline", pos[0], "model", plan.ModelName, "layers", plan.Model.NumLayers)
	opts := stages.RunOptions{Log: log}
	display := con.start(&opts, log, prog, "")
	report, runErr := plan.Run(ctx, opts)
	display.finish() // before the report: a bar must not cut into it
	if report != nil {
		if runErr != nil {
			report.Error = runErr.Error()
		}
		if err := report.WriteText(stdout); err != nil {
			fmt.Fprintf(stderr, "flow run: writing the report: %v\n", err)
			return exitFailed
		}
		if jsonFile != nil {
			if err := writeJSON(jsonFile, report); err != nil {
				fmt.Fprintf(stderr, "flow run: --json %s: %v\n", *jsonPath, err)
				return exitFailed
			}
		}
	}
	if runErr != nil {
		if pe, ok := errors.AsType[*pipeline.PanicError](runErr); ok {
			log.Debug("stage panicked", "stack", pe.Stack)
		}
		fmt.Fprintf(stderr, "flow run: %s: %v\n", pos[0], runErr)
		return exitFailed
	}
	return exitOK
}

func writeJSON(f *os.File, r *stages.Report) error {
	if err := r.WriteJSON(f); err != nil {
		return err
	}
	return f.Close()
}

func validateCmd(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("validate", stderr)
	vars := varsFlag{}
	fs.Var(vars, "var", "set a variable: name=value (repeatable)")
	pos, err := parse(fs, args)
	if err != nil {
		return exitUsage
	}
	if len(pos) != 1 {
		fmt.Fprintf(stderr, "flow validate: want one pipeline file, got %d\n%s", len(pos), usage)
		return exitUsage
	}
	plan, diags := load(pos[0], vars)
	writeDiags(stderr, diags)
	if diags.HasErrors() {
		return exitUsage
	}
	names := make([]string, len(plan.Stages))
	for i, s := range plan.Stages {
		names[i] = s.Name
	}
	fmt.Fprintf(stdout, "%s: ok (model %s, %d layers, stages %v)\n", pos[0], plan.ModelName, plan.Model.NumLayers, names)
	return exitOK
}

// load decodes and checks a pipeline file against the built-in registry.
func load(path string, vars map[string]string) (*stages.Plan, hcl.Diagnostics) {
	f, diags := config.LoadFile(path, vars)
	if diags.HasErrors() {
		return nil, diags
	}
	plan, d := stages.Build(f, stages.DefaultRegistry())
	return plan, append(diags, d...)
}
