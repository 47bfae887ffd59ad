package storage

import (
	"fmt"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// badgerLogger hands Badger's log to an hclog.Logger. Badger logs routine
// events (tables opened, files replayed, GC passes) at Info, so they go to
// Debug here, and its Debug to Trace: a tier's normal life is quiet at Info.
type badgerLogger struct{ l hclog.Logger }

func (b badgerLogger) Errorf(f string, a ...any) { b.l.Error(badgerLine(f, a)) }

func (b badgerLogger) Warningf(f string, a ...any) {
	if b.l.IsWarn() {
		b.l.Warn(badgerLine(f, a))
	}
}

func (b badgerLogger) Infof(f string, a ...any) {
	if b.l.IsDebug() {
		b.l.Debug(badgerLine(f, a))
	}
}

func (b badgerLogger) Debugf(f string, a ...any) {
	if b.l.IsTrace() {
		b.l.Trace(badgerLine(f, a))
	}
}

// badgerLine formats one Badger message; Badger ends most with a newline,
// which hclog would print as an empty line.
func badgerLine(f string, a []any) string {
	return strings.TrimRight(fmt.Sprintf(f, a...), "\n")
}
