package pipeline_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/kvflow/kvflow/pipeline"
	"github.com/reugn/go-streams/flow"
)

// line is one line of a document; lines of a document must stay in order.
type line struct {
	doc  string
	n    int
	text string
}

// trim is a custom stage: any type with Name and Process is a Stage.
type trim struct{}

func (trim) Name() string { return "trim" }

func (trim) Process(_ context.Context, l line) (line, error) {
	l.text = strings.TrimSpace(l.text)
	return l, nil
}

// counted is what the last stage produces.
type counted struct {
	line
	words int
}

// countWords is another custom stage, changing the item type.
type countWords struct{}

func (countWords) Name() string { return "count" }

func (countWords) Process(_ context.Context, l line) (counted, error) {
	return counted{l, len(strings.Fields(l.text))}, nil
}

// Example composes a StageFunc between two custom stages. Lines of different documents are
// processed in parallel, but each document's lines reach the sink in order.
func Example() {
	input := []line{
		{"poem", 1, "  so much depends  "},
		{"memo", 1, "ship it"},
		{"poem", 2, " upon "},
		{"memo", 2, "  then test it "},
		{"poem", 3, "a red wheel barrow"},
	}

	p := pipeline.New()
	lines := pipeline.Source(p, "lines", func(l line) string { return l.doc },
		func(_ context.Context, emit func(line) error) error {
			for _, l := range input {
				if err := emit(l); err != nil {
					return err
				}
			}
			return nil
		})
	trimmed := pipeline.Then(lines, trim{}, pipeline.Options{Workers: 2})
	shouted := pipeline.Then(trimmed, pipeline.StageFunc("shout", func(_ context.Context, l line) (line, error) {
		l.text = strings.ToUpper(l.text)
		return l, nil
	}), pipeline.Options{Workers: 4})
	counts := pipeline.Then(shouted, countWords{}, pipeline.Options{Workers: 2})

	byDoc := map[string][]string{} // the sink runs in one goroutine: no lock needed
	pipeline.Sink(counts, "collect", func(_ context.Context, c counted) error {
		byDoc[c.doc] = append(byDoc[c.doc], fmt.Sprintf("%d: %s (%d words)", c.n, c.text, c.words))
		return nil
	})

	if err := p.Run(context.Background()); err != nil {
		fmt.Println("error:", err)
		return
	}
	for _, doc := range slices.Sorted(maps.Keys(byDoc)) {
		fmt.Println(doc)
		for _, l := range byDoc[doc] {
			fmt.Println(" ", l)
		}
	}
	for _, m := range p.Metrics() {
		fmt.Println(m.Name, m.Items)
	}
	// Output:
	// memo
	//   1: SHIP IT (2 words)
	//   2: THEN TEST IT (3 words)
	// poem
	//   1: SO MUCH DEPENDS (3 words)
	//   2: UPON (1 words)
	//   3: A RED WHEEL BARROW (4 words)
	// lines 5
	// trim 5
	// shout 5
	// count 5
	// collect 5
}

// ExampleVia puts go-streams operators in a typed chain: a Filter drops the blank lines and a
// Map measures the others. With parallelism 1 they keep the order, so each document's lines
// still arrive in order.
func ExampleVia() {
	input := []line{
		{"poem", 1, "so much depends"},
		{"memo", 1, "ship it"},
		{"poem", 2, "   "},
		{"memo", 2, ""},
		{"poem", 3, "upon"},
		{"memo", 3, "then test it"},
	}

	p := pipeline.New()
	lines := pipeline.Source(p, "lines", func(l line) string { return l.doc },
		func(_ context.Context, emit func(line) error) error {
			for _, l := range input {
				if err := emit(l); err != nil {
					return err
				}
			}
			return nil
		})
	trimmed := pipeline.Then(lines, trim{}, pipeline.Options{Workers: 2})
	nonBlank := pipeline.Via(trimmed, "non-blank",
		flow.NewFilter(func(l line) bool { return l.text != "" }, 1),
		func(l line) string { return l.doc })
	counts := pipeline.Via(nonBlank, "count",
		flow.NewMap(func(l line) counted { return counted{l, len(strings.Fields(l.text))} }, 1),
		func(c counted) string { return c.doc })

	byDoc := map[string][]string{}
	pipeline.Sink(counts, "collect", func(_ context.Context, c counted) error {
		byDoc[c.doc] = append(byDoc[c.doc], fmt.Sprintf("%d: %s (%d words)", c.n, c.text, c.words))
		return nil
	})

	if err := p.Run(context.Background()); err != nil {
		fmt.Println("error:", err)
		return
	}
	for _, doc := range slices.Sorted(maps.Keys(byDoc)) {
		fmt.Println(doc, byDoc[doc])
	}
	for _, m := range p.Metrics() {
		fmt.Println(m.Name, m.Items)
	}
	// Output:
	// memo [1: ship it (2 words) 3: then test it (3 words)]
	// poem [1: so much depends (3 words) 3: upon (1 words)]
	// lines 6
	// trim 6
	// non-blank 4
	// count 4
	// collect 4
}
