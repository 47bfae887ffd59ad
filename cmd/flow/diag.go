package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// writeDiags prints one line per diagnostic: file:line:col, severity, summary
// and detail, so editors and CI logs can jump to the place.
func writeDiags(w io.Writer, diags hcl.Diagnostics) {
	for _, d := range diags {
		sev := "error"
		if d.Severity == hcl.DiagWarning {
			sev = "warning"
		}
		loc := "flow"
		if d.Subject != nil {
			loc = fmt.Sprintf("%s:%d:%d", d.Subject.Filename, d.Subject.Start.Line, d.Subject.Start.Column)
		}
		msg := d.Summary
		if detail := strings.Join(strings.Fields(d.Detail), " "); detail != "" {
			msg += ": " + detail
		}
		fmt.Fprintf(w, "%s: %s: %s\n", loc, sev, msg)
	}
}
