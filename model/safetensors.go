package model

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"strings"
)

// The safetensors format: an 8-byte little-endian header length N, N bytes of
// JSON mapping tensor names to {dtype, shape, data_offsets} (plus an optional
// "__metadata__" string map), then the raw little-endian tensor bytes, with
// offsets relative to the end of the header. It is simple enough that parsing
// it here, with every bound checked, is more robust than a dependency.

// maxHeaderBytes bounds the JSON header; real files have a few hundred KB at
// most, and a garbled length must not make us allocate gigabytes.
const maxHeaderBytes = 100 << 20

// stTensor is one tensor of a safetensors file; Data aliases the file's bytes.
type stTensor struct {
	DType string
	Shape []int
	Data  []byte
}

// stFile is a parsed safetensors file.
type stFile struct {
	Meta    map[string]string
	Tensors map[string]stTensor
}

// stElemSize returns the byte size of a safetensors dtype, or 0 if it is not
// one this package reads.
func stElemSize(dtype string) int {
	switch dtype {
	case "F64", "I64":
		return 8
	case "F32", "I32":
		return 4
	case "F16", "BF16":
		return 2
	}
	return 0
}

func readSafetensors(path string) (*stFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	f, err := parseSafetensors(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

func parseSafetensors(data []byte) (*stFile, error) {
	if len(data) < 8 {
		return nil, fmt.Errorf("safetensors: file of %d bytes is too short for the header length", len(data))
	}
	n := binary.LittleEndian.Uint64(data)
	if n > maxHeaderBytes || n > uint64(len(data)-8) {
		return nil, fmt.Errorf("safetensors: header length %d does not fit a file of %d bytes", n, len(data))
	}
	header, body := data[8:8+n], data[8+n:]
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(header, &raw); err != nil {
		return nil, fmt.Errorf("safetensors: header: %w", err)
	}
	f := &stFile{Tensors: make(map[string]stTensor, len(raw))}
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &f.Meta); err != nil {
				return nil, fmt.Errorf("safetensors: __metadata__: %w", err)
			}
			continue
		}
		var info struct {
			DType   string    `json:"dtype"`
			Shape   []int64   `json:"shape"`
			Offsets *[2]int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(msg, &info); err != nil {
			return nil, fmt.Errorf("safetensors: tensor %q: %w", name, err)
		}
		size := stElemSize(info.DType)
		if size == 0 {
			return nil, fmt.Errorf("safetensors: tensor %q: unsupported dtype %q", name, info.DType)
		}
		if info.Offsets == nil {
			return nil, fmt.Errorf("safetensors: tensor %q: missing data_offsets", name)
		}
		numel := int64(1)
		shape := make([]int, len(info.Shape))
		for i, d := range info.Shape {
			// The bound keeps numel*size far from overflow.
			if d < 0 || d > math.MaxInt32 || (d > 0 && numel > (math.MaxInt64/8)/d) {
				return nil, fmt.Errorf("safetensors: tensor %q: bad shape %v", name, info.Shape)
			}
			numel *= d
			shape[i] = int(d)
		}
		begin, end := info.Offsets[0], info.Offsets[1]
		if begin < 0 || end < begin || end > int64(len(body)) {
			return nil, fmt.Errorf("safetensors: tensor %q: data_offsets [%d, %d] outside the %d data bytes", name, begin, end, len(body))
		}
		if end-begin != numel*int64(size) {
			return nil, fmt.Errorf("safetensors: tensor %q: %d bytes for shape %v of %s, want %d", name, end-begin, info.Shape, info.DType, numel*int64(size))
		}
		f.Tensors[name] = stTensor{DType: info.DType, Shape: shape, Data: body[begin:end:end]}
	}
	return f, nil
}

// tensor returns the named tensor after checking its shape.
func (f *stFile) tensor(name string, shape ...int) (stTensor, error) {
	t, ok := f.Tensors[name]
	if !ok {
		return stTensor{}, fmt.Errorf("missing tensor %q", name)
	}
	if !slices.Equal(t.Shape, shape) {
		return stTensor{}, fmt.Errorf("tensor %q: shape %v, want %v", name, t.Shape, shape)
	}
	return t, nil
}

// floats returns the named tensor, of the given shape, converted to float32.
func (f *stFile) floats(name string, shape ...int) ([]float32, error) {
	t, err := f.tensor(name, shape...)
	if err != nil {
		return nil, err
	}
	d := t.Data
	var out []float32
	switch t.DType {
	case "F32":
		out = make([]float32, len(d)/4)
		F32.Decode(out, d)
	case "BF16":
		out = make([]float32, len(d)/2)
		BF16.Decode(out, d)
	case "F16":
		out = make([]float32, len(d)/2)
		F16.Decode(out, d)
	case "F64":
		out = make([]float32, len(d)/8)
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(d[8*i:])))
		}
	default:
		return nil, fmt.Errorf("tensor %q: dtype %s is not a floating-point type", name, t.DType)
	}
	return out, nil
}

// ints returns the named integer tensor, of the given shape, as int64.
func (f *stFile) ints(name string, shape ...int) ([]int64, error) {
	t, err := f.tensor(name, shape...)
	if err != nil {
		return nil, err
	}
	d := t.Data
	var out []int64
	switch t.DType {
	case "I64":
		out = make([]int64, len(d)/8)
		for i := range out {
			out[i] = int64(binary.LittleEndian.Uint64(d[8*i:]))
		}
	case "I32":
		out = make([]int64, len(d)/4)
		for i := range out {
			out[i] = int64(int32(binary.LittleEndian.Uint32(d[4*i:])))
		}
	default:
		return nil, fmt.Errorf("tensor %q: dtype %s is not an integer type", name, t.DType)
	}
	return out, nil
}

// names returns the tensor names with the given prefix, sorted.
func (f *stFile) names(prefix string) []string {
	var out []string
	for n := range f.Tensors {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}
