package stages

import (
	"context"
	"fmt"
	"math/rand/v2"
)

// ChatSettings configure the synthetic multimodal chat source.
type ChatSettings struct {
	// Sessions is the number of concurrent chat sessions.
	Sessions int `hcl:"sessions,optional"`
	// Turns is the number of user turns per session; turn k's prompt is the
	// whole conversation so far.
	Turns int `hcl:"turns,optional"`
	// SystemTokens is the length of the system prompt all sessions share.
	SystemTokens int `hcl:"system_tokens,optional"`
	// UserTokens and ResponseTokens are the text lengths of each user
	// message and each response; responses run as decode steps.
	UserTokens     int `hcl:"user_tokens,optional"`
	ResponseTokens int `hcl:"response_tokens,optional"`
	// ImageEvery puts an image in every n-th user turn (0: none).
	ImageEvery int `hcl:"image_every,optional"`
	// ImageGrid is the image's token grid (t, h, w) after spatial merging:
	// it takes t*h*w tokens and MRoPE positions of its own.
	ImageGrid []int `hcl:"image_grid,optional"`
	// WarmSystem starts the other sessions once the first session's first
	// turn has finished, as in a server that has seen its system prompt
	// before; otherwise every session computes the system prompt at once.
	WarmSystem bool `hcl:"warm_system_prompt,optional"`
	// Seed makes the token ids and image contents.
	Seed int64 `hcl:"seed,optional"`
}

// DefaultChatSettings are the settings a source block leaves unset.
func DefaultChatSettings() ChatSettings {
	return ChatSettings{Sessions: 8, Turns: 3, SystemTokens: 512, UserTokens: 64, ResponseTokens: 16,
		ImageEvery: 2, ImageGrid: []int{1, 8, 8}, WarmSystem: true, Seed: 1}
}

// Bounds of the chat workload, so that a typo cannot exhaust memory.
const (
	maxSessions    = 1 << 20
	maxChatTokens  = 1 << 20 // tokens of any one request
	maxImageTokens = 1 << 16
	maxChatMemory  = 4 << 30 // conversations kept by the source
)

// Qwen3-VL special tokens.
const (
	tokIMStart     = 151644
	tokIMEnd       = 151645
	tokVisionStart = 151652
	tokVisionEnd   = 151653
	tokImagePad    = 151655
	textVocab      = 151643
)

// Chat is a synthetic multimodal chat workload: many sessions share one
// system prompt; each session has several turns whose prompt repeats the
// conversation so far; some user turns carry an image, whose tokens take
// MRoPE grid positions and whose content hash enters the block keys. Turn
// k+1 of a session is issued once turn k has finished, as a user waits for
// an answer, so its prefix can be served from the cache.
type Chat struct{ s ChatSettings }

// NewChat validates s and returns the source.
func NewChat(s ChatSettings) (*Chat, error) {
	switch {
	case s.Sessions < 1:
		return nil, SettingErrorf("sessions", "%d: must be at least 1", s.Sessions)
	case s.Turns < 1:
		return nil, SettingErrorf("turns", "%d: must be at least 1", s.Turns)
	case s.SystemTokens < 0:
		return nil, SettingErrorf("system_tokens", "%d: must not be negative", s.SystemTokens)
	case s.UserTokens < 1:
		return nil, SettingErrorf("user_tokens", "%d: must be at least 1", s.UserTokens)
	case s.ResponseTokens < 0:
		return nil, SettingErrorf("response_tokens", "%d: must not be negative", s.ResponseTokens)
	case s.ImageEvery < 0:
		return nil, SettingErrorf("image_every", "%d: must not be negative", s.ImageEvery)
	case s.ImageEvery > 0 && (len(s.ImageGrid) != 3 || s.ImageGrid[0] < 1 || s.ImageGrid[1] < 1 || s.ImageGrid[2] < 1):
		return nil, SettingErrorf("image_grid", "%v: want three positive sizes [t, h, w]", s.ImageGrid)
	case s.Sessions > maxSessions:
		return nil, SettingErrorf("sessions", "%d: at most %d", s.Sessions, maxSessions)
	case s.ImageEvery > 0 && (s.ImageGrid[0] > maxChatTokens || s.ImageGrid[1] > maxChatTokens || s.ImageGrid[2] > maxChatTokens ||
		s.ImageGrid[0]*s.ImageGrid[1]*s.ImageGrid[2] > maxImageTokens):
		return nil, SettingErrorf("image_grid", "%v: an image takes at most %d tokens", s.ImageGrid, maxImageTokens)
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"turns", s.Turns}, {"system_tokens", s.SystemTokens}, {"user_tokens", s.UserTokens}, {"response_tokens", s.ResponseTokens}} {
		if f.v > maxChatTokens {
			return nil, SettingErrorf(f.name, "%d: at most %d", f.v, maxChatTokens)
		}
	}
	// The longest request is a session's last turn: the whole conversation.
	perTurn := s.UserTokens + s.ResponseTokens + 4 // <|im_start|>, <|im_end|><|im_start|>, <|im_end|>
	if s.ImageEvery > 0 {
		perTurn += s.ImageGrid[0]*s.ImageGrid[1]*s.ImageGrid[2] + 2
	}
	longest := s.SystemTokens + 2 + s.Turns*perTurn
	if longest > maxChatTokens {
		return nil, SettingErrorf("turns", "a session's last request would hold %d tokens; at most %d", longest, maxChatTokens)
	}
	// Every session's conversation is kept: a token id and three positions.
	if mem := int64(s.Sessions) * int64(longest) * 28; mem > maxChatMemory {
		return nil, SettingErrorf("sessions", "%d sessions of up to %d tokens would hold %d MiB of conversation; at most %d MiB",
			s.Sessions, longest, mem>>20, maxChatMemory>>20)
	}
	return &Chat{s: s}, nil
}

// Total returns the number of requests the source emits.
func (c *Chat) Total() int { return c.s.Sessions * c.s.Turns }

// Requests implements Source.
func (c *Chat) Requests(ctx context.Context, emit func(*Request) error) error {
	s := c.s
	rng := rand.New(rand.NewPCG(uint64(s.Seed), 0x6b766c6f77))
	system := append([]int32{tokIMStart}, texts(rng, s.SystemTokens)...)
	system = append(system, tokIMEnd)
	convs := make([]*conversation, s.Sessions)
	for i := range convs {
		convs[i] = &conversation{b: newBuilder(system)}
	}
	wait := func(done chan struct{}) error {
		select {
		case <-done:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for turn := range s.Turns {
		for i, cv := range convs {
			prev := cv.prev
			if turn == 0 && i > 0 && s.WarmSystem {
				prev = convs[0].prev
			}
			if prev != nil {
				if err := wait(prev); err != nil {
					return err
				}
			}
			r := cv.b.turn(c.s, rng, i, turn)
			cv.prev = r.Done
			if err := emit(r); err != nil {
				return err
			}
		}
	}
	return nil
}

type conversation struct {
	b    *builder
	prev chan struct{}
}

func texts(rng *rand.Rand, n int) []int32 {
	t := make([]int32, n)
	for i := range t {
		t[i] = int32(rng.IntN(textVocab))
	}
	return t
}

// builder accumulates a conversation's tokens, positions and images.
type builder struct {
	tokens []int32
	pos    [3][]int64
	images []ImageRun
	next   int64 // the next text position
}

func newBuilder(system []int32) *builder {
	b := &builder{}
	b.text(system)
	return b
}

func (b *builder) text(ids []int32) {
	for _, id := range ids {
		b.tokens = append(b.tokens, id)
		for r := range b.pos {
			b.pos[r] = append(b.pos[r], b.next)
		}
		b.next++
	}
}

// image appends a run of t*h*w image tokens at grid positions; text resumes
// at the start plus the grid's largest side.
func (b *builder) image(grid []int, hash uint64) {
	t, h, w := grid[0], grid[1], grid[2]
	b.text([]int32{tokVisionStart})
	start := len(b.tokens)
	for ti := range t {
		for hi := range h {
			for wi := range w {
				b.tokens = append(b.tokens, tokImagePad)
				b.pos[0] = append(b.pos[0], b.next+int64(ti))
				b.pos[1] = append(b.pos[1], b.next+int64(hi))
				b.pos[2] = append(b.pos[2], b.next+int64(wi))
			}
		}
	}
	b.images = append(b.images, ImageRun{Start: start, Len: t * h * w, Hash: hash, Grid: [3]int{t, h, w}})
	b.next += int64(max(t, h, w))
	b.text([]int32{tokVisionEnd})
}

// turn appends session i's user turn and returns the request for it, whose
// tokens end with the response; the response stays in the conversation.
func (b *builder) turn(s ChatSettings, rng *rand.Rand, session, turn int) *Request {
	b.text([]int32{tokIMStart})
	if s.ImageEvery > 0 && (turn+1)%s.ImageEvery == 0 {
		b.image(s.ImageGrid, rng.Uint64())
	}
	b.text(texts(rng, s.UserTokens))
	b.text([]int32{tokIMEnd, tokIMStart})
	promptLen := len(b.tokens)
	b.text(texts(rng, s.ResponseTokens))
	r := &Request{
		ID:        fmt.Sprintf("s%d-t%d", session, turn),
		Tokens:    append([]int32(nil), b.tokens...),
		PromptLen: promptLen,
		Images:    append([]ImageRun(nil), b.images...),
		Done:      make(chan struct{}),
	}
	for i := range b.pos {
		r.Positions[i] = append([]int64(nil), b.pos[i]...)
	}
	b.text([]int32{tokIMEnd})
	return r
}
