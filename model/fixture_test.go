package model

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"os"
	"strings"
	"testing"
)

func TestSyntheticFixtureRoundTrip(t *testing.T) {
	meta, tensors := syntheticFixture(t)
	f, err := LoadFixture(writeFile(t, "synthetic.safetensors", encodeSafetensors(t, meta, tensors)))
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != "synthetic" || f.Config.HiddenSize != tinyConfig.HiddenSize || len(f.Decode) != 2 || f.Prefill.Tokens() != 5 {
		t.Fatalf("loaded %s: %+v, %d decode steps, %d prefill tokens", f.Name, f.Config, len(f.Decode), f.Prefill.Tokens())
	}
	for _, block := range []int{1, 3, 100} {
		r, err := f.Verify(F32, block)
		if err != nil {
			t.Fatal(err)
		}
		if r.Max > 1e-6 {
			t.Errorf("block %d: %v", block, r)
		}
	}
}

func TestLoadFixtureErrors(t *testing.T) {
	meta, tensors := syntheticFixture(t)
	valid := encodeSafetensors(t, meta, tensors)
	tiny, err := os.ReadFile(fixturePaths["tiny"])
	if err != nil {
		t.Fatal(err)
	}

	// with returns the fixture with some tensors replaced (a nil entry
	// deletes) and metadata fields overridden (a nil value deletes).
	with := func(change map[string]*stEntry, metaChange map[string]any) []byte {
		ts := maps.Clone(tensors)
		for n, e := range change {
			if e == nil {
				delete(ts, n)
			} else {
				ts[n] = *e
			}
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(meta["meta"]), &m); err != nil {
			t.Fatal(err)
		}
		for k, v := range metaChange {
			if v == nil {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		mj, _ := json.Marshal(m)
		return encodeSafetensors(t, map[string]string{"meta": string(mj)}, ts)
	}
	hugeLen := binary.LittleEndian.AppendUint64(nil, 1<<62)
	wrongShape := f32Entry([]int{8, 32}, make([]float32, 8*32)) // right size, wrong shape
	asF32 := f32Entry([]int{3, 5}, make([]float32, 15))
	bad := f32Entry([]int{16}, make([]float32, 16))
	bad.dtype = "U8"
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "too short"},
		{"garbage", []byte("this is not a safetensors file at all"), "header length"},
		{"huge header length", append(hugeLen, "{}"...), "header length"},
		{"truncated header", tiny[:2000], "header length"},
		{"truncated data", tiny[:len(tiny)/2], "outside"},
		{"header not JSON", append(binary.LittleEndian.AppendUint64(nil, 4), "{{{{"...), "header"},
		{"no metadata", encodeSafetensors(t, nil, tensors), "__metadata__"},
		{"missing tensor", with(map[string]*stEntry{"k_norm.weight": nil}, nil), `"k_norm.weight"`},
		{"wrong shape", with(map[string]*stEntry{"k_proj.weight": &wrongShape}, nil), `"k_proj.weight": shape [8 32], want [16 16]`},
		{"positions not ints", with(map[string]*stEntry{"prefill.position_ids": &asF32}, nil), "prefill.position_ids"},
		{"unsupported dtype", with(map[string]*stEntry{"q_norm.weight": &bad}, nil), "U8"},
		{"missing decode output", with(map[string]*stEntry{"decode.1.output": nil}, nil), `"decode.1.output"`},
		{"metadata prefill_tokens", with(nil, map[string]any{"prefill_tokens": 6}), "prefill_tokens"},
		{"metadata decode_steps", with(nil, map[string]any{"decode_steps": 3}), "decode_steps"},
		{"metadata invalid geometry", with(nil, map[string]any{"num_key_value_heads": 3}), "NumKVHeads"},
		{"metadata missing head_dim", with(nil, map[string]any{"head_dim": nil}), "head_dim"},
		{"metadata hidden_size mismatch", with(nil, map[string]any{"hidden_size": 32}), "q_proj.weight"},
		{"metadata scaling", with(nil, map[string]any{"scaling": 0.5}), "scaling"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := LoadFixture(writeFile(t, "bad.safetensors", c.data))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got error %v, want one containing %q", err, c.want)
			}
		})
	}
	if _, err := LoadFixture(writeFile(t, "ok.safetensors", valid)); err != nil {
		t.Fatalf("the unmodified synthetic fixture: %v", err)
	}
	if _, err := LoadFixture("testdata/missing.safetensors"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: got %v, want ErrNotExist", err)
	}
}

func TestParseSafetensorsBounds(t *testing.T) {
	// Offsets and shapes that lie are caught before any slicing.
	for _, header := range []string{
		`{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}`,
		`{"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 0]}}`,
		`{"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}`,
		`{"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}`,
		`{"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], "data_offsets": [0, 8]}}`,
		`{"a": {"dtype": "F32", "shape": [2]}}`,
		`{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"x": 1}}`,
		`{"a": 5}`,
		`[]`,
	} {
		data := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
		data = append(data, header...)
		data = append(data, make([]byte, 8)...)
		if _, err := parseSafetensors(data); err == nil {
			t.Errorf("header %s: no error", header)
		}
	}
}

func FuzzLoadFixture(f *testing.F) {
	meta, tensors := syntheticFixture(f)
	valid := encodeSafetensors(f, meta, tensors)
	f.Add(valid)
	f.Add(valid[:len(valid)-3])
	f.Add(valid[:100])
	f.Add([]byte{})
	f.Add([]byte("\x02\x00\x00\x00\x00\x00\x00\x00{}"))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		// A fresh file each time: truncating and rewriting one file makes
		// ext4 flush it to disk on every run (auto_da_alloc), which stalls
		// the fuzzer on slow disks.
		file, err := os.CreateTemp(dir, "*.safetensors")
		if err != nil {
			t.Fatal(err)
		}
		defer os.Remove(file.Name())
		if _, err := file.Write(data); err != nil {
			t.Fatal(err)
		}
		if err := file.Close(); err != nil {
			t.Fatal(err)
		}
		fx, err := LoadFixture(file.Name())
		if err != nil {
			return
		}
		// Whatever loads must also run without panicking; numbers may be
		// anything.
		if _, err := fx.Verify(BF16, 3); err != nil {
			t.Fatalf("loaded fixture does not verify: %v", err)
		}
	})
}
