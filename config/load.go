package config

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/gohcl"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
)

// LoadFile reads and decodes the pipeline file at path. vars are the values
// given with --var, by variable name.
func LoadFile(path string, vars map[string]string) (*File, hcl.Diagnostics) {
	src, err := readLimited(path, MaxFileSize)
	if err != nil {
		return nil, hcl.Diagnostics{{
			Severity: hcl.DiagError,
			Summary:  "Cannot read pipeline file",
			Detail:   err.Error(),
			Subject:  &hcl.Range{Filename: path, Start: hcl.InitialPos, End: hcl.InitialPos},
		}}
	}
	return Load(path, src, vars)
}

// MaxFileSize bounds the size of a pipeline file LoadFile reads.
const MaxFileSize = 16 << 20

// readLimited reads a file of at most limit bytes.
func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d MiB: not a pipeline file", path, limit>>20)
	}
	return b, nil
}

// Load decodes a pipeline file from src; filename is used in diagnostics.
func Load(filename string, src []byte, vars map[string]string) (*File, hcl.Diagnostics) {
	syntax, diags := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if diags.HasErrors() {
		return nil, diags
	}
	body := syntax.Body

	// Pass 1: variables, so that var.x can be evaluated in the rest.
	content, _, d := body.PartialContent(&hcl.BodySchema{
		Blocks: []hcl.BlockHeaderSchema{{Type: "variable", LabelNames: []string{"name"}}},
	})
	diags = append(diags, d...)
	values, ctx, d := evalVariables(filename, content.Blocks, vars)
	diags = append(diags, d...)
	if diags.HasErrors() {
		return nil, diags
	}

	// Pass 2: everything, with var in scope.
	f := &File{Filename: filename, Values: values, Ctx: ctx}
	diags = append(diags, gohcl.DecodeBody(body, ctx, f)...)
	if diags.HasErrors() {
		return nil, diags
	}
	if _, set := body.(*hclsyntax.Body).Attributes["stages"]; !set {
		f.Stages = DefaultChain()
	}
	diags = append(diags, f.check(body.(*hclsyntax.Body).SrcRange)...)
	if diags.HasErrors() {
		return nil, diags
	}
	return f, diags
}

// evalVariables evaluates the variable blocks' defaults, applies the --var
// values and returns them with the context that defines var.
func evalVariables(filename string, blocks hcl.Blocks, set map[string]string) (map[string]string, *hcl.EvalContext, hcl.Diagnostics) {
	var diags hcl.Diagnostics
	vals := map[string]cty.Value{}
	declared := map[string]bool{}
	for _, b := range blocks {
		var v Variable
		if d := gohcl.DecodeBody(b.Body, nil, &v); d.HasErrors() {
			diags = append(diags, d...)
			continue
		}
		v.Name, v.DeclRange = b.Labels[0], b.DefRange
		if !hclsyntax.ValidIdentifier(v.Name) {
			diags = append(diags, errorAt(b.LabelRanges[0], "Invalid variable name",
				fmt.Sprintf("%q is not a valid identifier: use letters, digits, _ and -.", v.Name)))
			continue
		}
		if declared[v.Name] {
			diags = append(diags, errorAt(b.DefRange, "Duplicate variable", fmt.Sprintf("Variable %q is declared twice.", v.Name)))
			continue
		}
		declared[v.Name] = true
		def := cty.NilVal
		if v.Default != nil && !isNullExpr(v.Default) {
			val, d := v.Default.Value(nil)
			diags = append(diags, d...)
			if d.HasErrors() {
				continue
			}
			def = val
		}
		given, ok := set[v.Name]
		switch {
		case ok:
			val, err := fromFlag(given, def)
			if err != nil {
				diags = append(diags, errorAt(b.DefRange, "Invalid value for variable",
					fmt.Sprintf("--var %s=%s: %v.", v.Name, given, err)))
				continue
			}
			vals[v.Name] = val
		case def != cty.NilVal:
			vals[v.Name] = def
		default:
			diags = append(diags, errorAt(b.DefRange, "No value for required variable",
				fmt.Sprintf("Variable %q has no default: set it with --var %s=VALUE.", v.Name, v.Name)))
		}
	}
	var unknown []string
	for name := range set {
		if !declared[name] {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	for _, name := range unknown {
		diags = append(diags, errorAt(hcl.Range{Filename: filename, Start: hcl.InitialPos, End: hcl.InitialPos},
			"Undeclared variable", fmt.Sprintf("--var %s: the file declares no variable %q.", name, name)))
	}
	strs := make(map[string]string, len(vals))
	for name, v := range vals {
		strs[name] = display(v)
	}
	return strs, &hcl.EvalContext{Variables: map[string]cty.Value{"var": cty.ObjectVal(vals)}}, diags
}

func isNullExpr(e hcl.Expression) bool {
	v, d := e.Value(nil)
	return !d.HasErrors() && v.IsNull()
}

// fromFlag converts a --var string to the type of the variable's default.
func fromFlag(s string, def cty.Value) (cty.Value, error) {
	if def == cty.NilVal || def.Type() == cty.String {
		return cty.StringVal(s), nil
	}
	if def.Type().IsPrimitiveType() {
		v, err := convert.Convert(cty.StringVal(s), def.Type())
		if err != nil {
			return cty.NilVal, fmt.Errorf("want a %s like the default", def.Type().FriendlyName())
		}
		return v, nil
	}
	return cty.NilVal, fmt.Errorf("variables of type %s cannot be set with --var", def.Type().FriendlyName())
}

func display(v cty.Value) string {
	if v.IsNull() || !v.IsKnown() {
		return ""
	}
	if s, err := convert.Convert(v, cty.String); err == nil && !s.IsNull() {
		return s.AsString()
	}
	return v.GoString()
}

// ParseVar splits a --var argument of the form name=value.
func ParseVar(arg string) (name, value string, err error) {
	name, value, ok := strings.Cut(arg, "=")
	if !ok || name == "" {
		return "", "", fmt.Errorf("--var %q: want name=value", arg)
	}
	return name, value, nil
}
