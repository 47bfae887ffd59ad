package hwtune

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"strings"
)

// profileFS holds the named profiles: recorded or synthetic Samples, one
// JSON file each, named "<profile>.json".
//
//go:embed profiles/*.json
var profileFS embed.FS

// Profiles returns the names of the embedded profiles, sorted:
// "epyc-2c" (the 2-core AMD EPYC VM kvflow is developed on, recorded),
// "h100-pcie" (a 16-core Xeon server with one H100 PCIe 80 GB, synthetic)
// and "i5-10210u-sm61" (the laptop the project started from: Core
// i5-10210U with a GeForce MX250, SM 6.1, synthetic).
func Profiles() []string {
	entries, err := profileFS.ReadDir("profiles")
	if err != nil {
		return nil
	}
	var names []string
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".json"); ok {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// ProfileSample returns a profile's raw sample.
func ProfileSample(name string) (*Sample, error) {
	b, err := profileFS.ReadFile(path.Join("profiles", name+".json"))
	if err != nil || strings.ContainsAny(name, "/\\") {
		return nil, fmt.Errorf("hwtune: unknown hardware profile %q: want one of %s", name, strings.Join(Profiles(), ", "))
	}
	return DecodeSample(b)
}

// Profile parses a profile's sample; Source is "profile <name>".
func Profile(name string) (*Hardware, error) {
	s, err := ProfileSample(name)
	if err != nil {
		return nil, err
	}
	h, err := Parse(s)
	if err != nil {
		return nil, fmt.Errorf("hwtune: profile %q: %w", name, err)
	}
	h.Source = "profile " + name
	return h, nil
}

// DecodeSample reads a Sample's JSON, rejecting unknown fields.
func DecodeSample(b []byte) (*Sample, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var s Sample
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("hwtune: sample: %w", err)
	}
	return &s, nil
}
