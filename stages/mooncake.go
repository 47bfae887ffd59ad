package stages

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kvflow/kvflow/storage"
)

// MooncakeSettings configure the mooncake_trace source, which replays a
// request trace in the format of the Mooncake FAST'25 traces (one JSON object
// a line: timestamp, input_length, output_length, hash_ids).
type MooncakeSettings struct {
	// Path is the JSONL trace; a relative path is relative to the working
	// directory.
	Path string `hcl:"path"`
	// BlockTokens is the number of prompt tokens each hash id of the trace
	// covers (512 in the Mooncake traces). The cache's block_tokens must
	// equal it, or the trace's keys would name blocks of another size.
	BlockTokens int `hcl:"block_tokens,optional"`
	// Speed is "max" (emit requests as fast as the pipeline takes them) or a
	// positive factor: 1 replays the timestamps in real time, 10 ten times
	// faster. A number in the pipeline file is converted to its string.
	Speed string `hcl:"speed,optional"`
	// DecodeSteps is the number of decode tokens per request, at most the
	// line's output_length: replaying every output token of a trace is
	// rarely what a cache experiment needs.
	DecodeSteps int `hcl:"decode_steps,optional"`
	// OnError is what a malformed line does: "fail" stops the replay with
	// an error naming the line, "skip" drops the line and counts it
	// (MooncakeTrace.Skipped).
	OnError string `hcl:"on_error,optional"`
	// Seed mixes into every block key. Replays with equal seeds produce
	// equal keys, so a second replay over a persistent ssd tier hits what
	// the first one stored; a different seed keeps two replays (or two
	// traces whose hash ids overlap) apart in one cache.
	Seed int64 `hcl:"seed,optional"`
}

// DefaultMooncakeSettings are the settings a source block leaves unset; path
// has no default.
func DefaultMooncakeSettings() MooncakeSettings {
	return MooncakeSettings{BlockTokens: 512, Speed: "max", OnError: "fail"}
}

// Bounds of a trace, so that a typo or a corrupt line cannot exhaust memory.
const (
	maxTracePrompt      = 1 << 21  // input_length of one line
	maxTraceDecode      = 1 << 20  // decode_steps
	maxTraceBlockTokens = 1 << 20  // block_tokens
	maxTraceLine        = 16 << 20 // bytes of one line
)

// ErrMalformedTrace is wrapped by the error Requests returns for a malformed
// trace line.
var ErrMalformedTrace = errors.New("malformed trace line")

// MooncakeTrace replays a Mooncake conversation trace. Every line becomes a
// synthetic request (Request.Synthetic) whose prompt has input_length tokens
// and whose full blocks carry keys derived from the line's hash ids, so
// prefix reuse in the cache follows the trace; it is followed by
// min(decode_steps, output_length) decode tokens. The file is streamed, never
// loaded whole.
type MooncakeTrace struct {
	s       MooncakeSettings
	speed   float64 // 0: as fast as the pipeline takes requests
	skip    bool
	maxLine int

	skipped   atomic.Int64
	totalOnce sync.Once
	total     int
}

// NewMooncakeTrace validates s and returns the source. It checks that the
// trace is a readable regular file but does not read it: lines are checked as
// they are replayed.
func NewMooncakeTrace(s MooncakeSettings) (*MooncakeTrace, error) {
	m := &MooncakeTrace{s: s, maxLine: maxTraceLine}
	switch {
	case s.Path == "":
		return nil, SettingErrorf("path", "must not be empty")
	case s.BlockTokens < 1:
		return nil, SettingErrorf("block_tokens", "%d: must be at least 1", s.BlockTokens)
	case s.BlockTokens > maxTraceBlockTokens:
		return nil, SettingErrorf("block_tokens", "%d: at most %d", s.BlockTokens, maxTraceBlockTokens)
	case s.DecodeSteps < 0:
		return nil, SettingErrorf("decode_steps", "%d: must not be negative", s.DecodeSteps)
	case s.DecodeSteps > maxTraceDecode:
		return nil, SettingErrorf("decode_steps", "%d: at most %d", s.DecodeSteps, maxTraceDecode)
	}
	switch s.OnError {
	case "fail":
	case "skip":
		m.skip = true
	default:
		return nil, SettingErrorf("on_error", "%q: want \"fail\" or \"skip\"", s.OnError)
	}
	if s.Speed != "max" {
		v, err := strconv.ParseFloat(s.Speed, 64)
		if err != nil || !(v > 0) || math.IsInf(v, 0) {
			return nil, SettingErrorf("speed", "%q: want \"max\" or a positive factor such as \"1\" (real time) or \"10\"", s.Speed)
		}
		m.speed = v
	}
	fi, err := os.Stat(s.Path)
	if err != nil {
		return nil, SettingErrorf("path", "%q: %v", s.Path, causeOf(err))
	}
	if !fi.Mode().IsRegular() {
		return nil, SettingErrorf("path", "%q is not a regular file", s.Path)
	}
	f, err := os.Open(s.Path)
	if err != nil {
		return nil, SettingErrorf("path", "%q cannot be read: %v", s.Path, causeOf(err))
	}
	f.Close()
	return m, nil
}

// causeOf strips the operation and path from an *fs.PathError, which the
// diagnostic names already.
func causeOf(err error) error {
	if pe, ok := errors.AsType[*os.PathError](err); ok {
		return pe.Err
	}
	return err
}

// BlockTokens returns the number of tokens per hash id, which the pipeline's
// cache block_tokens must equal.
func (m *MooncakeTrace) BlockTokens() int { return m.s.BlockTokens }

// Skipped returns the number of malformed lines skipped (on_error = "skip")
// by all replays so far.
func (m *MooncakeTrace) Skipped() int64 { return m.skipped.Load() }

// Total returns the number of lines of the trace, counted once on the first
// call with a streaming pass over the file. Blank and malformed lines count
// too, so it is an upper bound on the requests emitted; it is 0 when the file
// cannot be read (Requests then reports why).
func (m *MooncakeTrace) Total() int {
	m.totalOnce.Do(func() { m.total = countLines(m.s.Path) })
	return m.total
}

func countLines(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	n, last := 0, byte('\n')
	for {
		k, err := f.Read(buf)
		if k > 0 {
			n += bytes.Count(buf[:k], []byte{'\n'})
			last = buf[k-1]
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0
		}
	}
	if last != '\n' {
		n++ // a last line without a newline
	}
	return n
}

// Requests implements Source: it emits one request per valid line, in file
// order, paced by the timestamps unless speed is "max". A malformed line
// fails the replay with "path:line: what is wrong", wrapping
// ErrMalformedTrace, or is skipped and counted. Requests stops when ctx is
// done, returning ctx.Err() (a paced replay sleeps on a timer and ctx, never
// spins), and returns emit's error as is. Pacing is relative to the call:
// a line stamped t ms is emitted no earlier than t/speed ms after it.
func (m *MooncakeTrace) Requests(ctx context.Context, emit func(*Request) error) error {
	f, err := os.Open(m.s.Path)
	if err != nil {
		return err
	}
	defer f.Close()
	lr := &lineReader{r: bufio.NewReaderSize(f, 64<<10), max: m.maxLine}
	start := time.Now()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var (
		prevTS int64
		lineNo int
		ramp   []int64 // 0, 1, 2, ...: the position rows of every request
	)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		line, long, err := lr.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		lineNo++
		var rec traceRecord
		var bad error
		switch {
		case long:
			bad = malformedf("line longer than %d bytes", m.maxLine)
		case len(bytes.TrimSpace(line)) == 0:
			continue
		default:
			rec, bad = parseTraceLine(line, m.s.BlockTokens)
			if bad == nil && rec.timestamp < prevTS {
				// A replay in time order needs the lines in time order.
				bad = malformedf("timestamp %d is before the previous line's %d", rec.timestamp, prevTS)
			}
		}
		if bad != nil {
			if m.skip {
				m.skipped.Add(1)
				continue
			}
			return fmt.Errorf("%s:%d: %w", m.s.Path, lineNo, bad)
		}
		prevTS = rec.timestamp
		r := m.request(rec, lineNo, &ramp)
		if m.speed > 0 {
			if d := replayDelay(rec.timestamp, m.speed) - time.Since(start); d > 0 {
				if timer == nil {
					timer = time.NewTimer(d)
				} else {
					timer.Reset(d)
				}
				select {
				case <-timer.C:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		if err := emit(r); err != nil {
			return err
		}
	}
}

// replayDelay is when a line stamped ts milliseconds is due, at speed.
func replayDelay(ts int64, speed float64) time.Duration {
	ns := float64(ts) / speed * float64(time.Millisecond)
	if ns >= math.MaxInt64/2 {
		return math.MaxInt64 / 2 // about 146 years: forever, until ctx ends
	}
	return time.Duration(ns)
}

// request builds the request of a valid line. ramp holds 0, 1, 2, ... and is
// grown as needed: every request's three position rows are views of it. They
// are text positions, equal to model.TextPositions(0, n), but a trace has
// millions of prompt tokens and allocating 24 bytes of positions for each
// would dominate a replay; requests are never changed once emitted, and the
// views are capped at their length so an append cannot reach a neighbour.
func (m *MooncakeTrace) request(rec traceRecord, lineNo int, ramp *[]int64) *Request {
	bt := m.s.BlockTokens
	prompt := int(rec.input)
	n := prompt + int(min(int64(m.s.DecodeSteps), rec.output))
	full := prompt / bt
	tokens := make([]int32, n) // decode tokens stay 0
	keys := make([]storage.BlockKey, full)
	for j, id := range rec.ids {
		k := traceKey(m.s.Seed, id)
		if j < full {
			keys[j] = k
		}
		// The ids do not enter the keys (Keys are given), but Embed makes the
		// hidden states of recomputed pages from them: one id per block,
		// derived from its key.
		fillTokens(tokens[j*bt:min((j+1)*bt, prompt)], int32(uint64(k)%textVocab))
	}
	if len(*ramp) < n {
		t := make([]int64, max(n, 2*len(*ramp), 4096))
		for i := range t {
			t[i] = int64(i)
		}
		*ramp = t
	}
	row := (*ramp)[:n:n]
	return &Request{
		ID:        fmt.Sprintf("t%d", lineNo),
		Tokens:    tokens,
		PromptLen: prompt,
		Positions: [3][]int64{row, row, row},
		Keys:      keys,
		Synthetic: true,
	}
}

// fillTokens sets every element of t to v, doubling copies rather than a loop
// over millions of tokens.
func fillTokens(t []int32, v int32) {
	if len(t) == 0 {
		return
	}
	t[0] = v
	for k := 1; k < len(t); k *= 2 {
		copy(t[k:], t[:k])
	}
}

// traceKey maps a hash id to a block key. The trace's ids already name a
// block together with everything before it, so an id alone identifies the
// prefix; the key is splitmix64 of the id mixed with the seed, which is a
// bijection for a fixed seed (distinct ids, distinct mixes) and spreads keys
// uniformly. The top bit is set so that no key is storage.RootKey (0).
func traceKey(seed, id int64) storage.BlockKey {
	z := uint64(id) ^ uint64(seed)*0x9e3779b97f4a7c15
	z += 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return storage.BlockKey(z | 1<<63)
}

// traceRecord is a valid trace line.
type traceRecord struct {
	timestamp, input, output int64
	ids                      []int64
}

// traceLine is the JSON of a line. Pointers tell a missing field from a zero;
// unknown fields are allowed, as later traces add some.
type traceLine struct {
	Timestamp    *int64   `json:"timestamp"`
	InputLength  *int64   `json:"input_length"`
	OutputLength *int64   `json:"output_length"`
	HashIDs      []hashID `json:"hash_ids"`
}

// hashID is an element of hash_ids; unlike int64 it rejects null, which
// encoding/json would otherwise leave as 0.
type hashID int64

// UnmarshalJSON accepts a JSON integer.
func (h *hashID) UnmarshalJSON(b []byte) error {
	v, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("hash id %.40s is not a 64-bit integer", b)
	}
	*h = hashID(v)
	return nil
}

// lineError is a malformed line's cause; it wraps ErrMalformedTrace and any
// decoding error.
type lineError struct {
	msg   string
	cause error
}

func (e *lineError) Error() string { return e.msg }

func (e *lineError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrMalformedTrace}
	}
	return []error{ErrMalformedTrace, e.cause}
}

func malformedf(format string, args ...any) error {
	return &lineError{msg: fmt.Sprintf(format, args...)}
}

// parseTraceLine decodes and checks one non-blank line of a trace whose hash
// ids cover blockTokens tokens each (blockTokens >= 1).
func parseTraceLine(line []byte, blockTokens int) (traceRecord, error) {
	var l traceLine
	if err := json.Unmarshal(line, &l); err != nil {
		return traceRecord{}, jsonLineError(err)
	}
	switch {
	case l.Timestamp == nil:
		return traceRecord{}, malformedf("missing timestamp")
	case l.InputLength == nil:
		return traceRecord{}, malformedf("missing input_length")
	case l.OutputLength == nil:
		return traceRecord{}, malformedf("missing output_length")
	case l.HashIDs == nil:
		return traceRecord{}, malformedf("missing hash_ids")
	case *l.Timestamp < 0:
		return traceRecord{}, malformedf("timestamp %d: must not be negative", *l.Timestamp)
	case *l.InputLength < 1:
		return traceRecord{}, malformedf("input_length %d: must be at least 1", *l.InputLength)
	case *l.InputLength > maxTracePrompt:
		return traceRecord{}, malformedf("input_length %d: at most %d", *l.InputLength, maxTracePrompt)
	case *l.OutputLength < 0:
		return traceRecord{}, malformedf("output_length %d: must not be negative", *l.OutputLength)
	}
	bt := int64(blockTokens)
	if want := (*l.InputLength + bt - 1) / bt; int64(len(l.HashIDs)) != want {
		return traceRecord{}, malformedf("%d hash_ids for input_length %d: want %d, one per %d tokens",
			len(l.HashIDs), *l.InputLength, want, blockTokens)
	}
	ids := make([]int64, len(l.HashIDs))
	for i, h := range l.HashIDs {
		if h < 0 {
			return traceRecord{}, malformedf("hash_ids[%d] = %d: must not be negative", i, h)
		}
		ids[i] = int64(h)
	}
	return traceRecord{timestamp: *l.Timestamp, input: *l.InputLength, output: *l.OutputLength, ids: ids}, nil
}

// jsonLineError describes a decoding error in the trace's terms.
func jsonLineError(err error) error {
	if se, ok := errors.AsType[*json.SyntaxError](err); ok {
		return &lineError{msg: "not JSON: " + se.Error(), cause: err}
	}
	if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		switch te.Field {
		case "":
			return &lineError{msg: "not a JSON object", cause: err}
		case "hash_ids":
			return &lineError{msg: fmt.Sprintf("hash_ids: %s where an array of integers was expected", te.Value), cause: err}
		default:
			return &lineError{msg: fmt.Sprintf("%s: %s where an integer was expected", te.Field, te.Value), cause: err}
		}
	}
	return &lineError{msg: err.Error(), cause: err}
}

// lineReader reads lines of at most max bytes without holding more than
// one line. bufio.Scanner would stop at its first overlong line; this drops
// the line's bytes, reports it, and goes on with the next one.
type lineReader struct {
	r   *bufio.Reader
	buf []byte
	max int
}

// next returns the next line without its newline, or io.EOF after the last
// one. long reports a line of more than max bytes, whose content is dropped.
// The line is valid until the next call.
func (lr *lineReader) next() (line []byte, long bool, err error) {
	lr.buf = lr.buf[:0]
	seen := 0
	for {
		frag, err := lr.r.ReadSlice('\n')
		seen += len(frag)
		if !long {
			if len(lr.buf)+len(frag) > lr.max+1 { // +1: the newline
				long = true
				lr.buf = lr.buf[:0]
			} else {
				lr.buf = append(lr.buf, frag...)
			}
		}
		switch {
		case err == bufio.ErrBufferFull:
			continue
		case err == io.EOF:
			if seen == 0 {
				return nil, false, io.EOF
			}
		case err != nil:
			return nil, false, err
		}
		line = bytes.TrimSuffix(lr.buf, []byte{'\n'})
		if long || len(line) > lr.max {
			return nil, true, nil
		}
		return line, false, nil
	}
}
