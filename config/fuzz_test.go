package config

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzLoad checks that any bytes decode to a file or to diagnostics, never a
// panic, and that every error diagnostic has a location.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte("variable \"x\" { default = 1 }\n" + minimal + "stages = [\"fetch\"]\n"))
	f.Add([]byte("model {\n  preset = \n}\n"))
	if paths, _ := filepath.Glob("../pipelines/*.hcl"); len(paths) > 0 {
		for _, p := range paths {
			if b, err := os.ReadFile(p); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		file, diags := Load("fuzz.hcl", src, map[string]string{})
		if diags.HasErrors() {
			if file != nil {
				t.Fatal("a file returned with errors")
			}
			for _, d := range diags {
				if d.Subject == nil {
					t.Fatalf("diagnostic without a location: %s: %s", d.Summary, d.Detail)
				}
			}
			return
		}
		if file == nil || file.Model == nil || file.Source == nil || file.Cache == nil || len(file.Stages) == 0 {
			t.Fatalf("no errors but an incomplete file: %+v", file)
		}
	})
}
