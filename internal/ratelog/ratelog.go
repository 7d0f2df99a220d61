// Package ratelog bounds the log lines of events that can come in floods,
// such as datagrams from strangers or exits of orphaned processes, without
// hiding how many there were.
package ratelog

import (
	"fmt"
	"sync"
	"time"
)

// Limiter writes the first line of a kind, then, while more keep coming,
// one summary line "... and N more <What>" at most once per Interval, so a
// flood of any size costs a few lines a minute. It is safe for concurrent
// use; Write is called with the Limiter locked, so lines keep their order
// and Write must not call back into the Limiter.
type Limiter struct {
	// Interval is the least time between two lines; 0 means DefaultInterval.
	Interval time.Duration
	// What names the events in a summary, in the plural: "notify messages
	// ignored" gives "... and 12 more notify messages ignored".
	What string
	// Write writes one line, without its line break.
	Write func(line string)

	mu         sync.Mutex
	quietUntil time.Time // lines before this are counted, not written
	suppressed int
	timer      *time.Timer
}

// DefaultInterval is the Interval of a Limiter that sets none.
const DefaultInterval = 10 * time.Second

// Log writes line, or counts it when a line was written less than Interval
// ago; the count is written once that Interval has passed, or by Flush.
func (l *Limiter) Log(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.suppressed == 0 && !now.Before(l.quietUntil) {
		l.Write(line)
		l.quietUntil = now.Add(l.interval())
		return
	}
	l.suppressed++
	if l.timer == nil {
		l.timer = time.AfterFunc(l.quietUntil.Sub(now), l.summarize)
	}
}

// Flush writes the count of the lines not yet summarized, if any, now:
// call it before the program exits.
func (l *Limiter) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	l.writeSummary()
}

func (l *Limiter) summarize() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.timer = nil
	if l.writeSummary() {
		// The summary counts as a line: a flood that goes on gets its next
		// one an Interval later.
		l.quietUntil = time.Now().Add(l.interval())
	}
}

func (l *Limiter) writeSummary() bool {
	if l.suppressed == 0 {
		return false
	}
	l.Write(fmt.Sprintf("... and %d more %s", l.suppressed, l.What))
	l.suppressed = 0
	return true
}

func (l *Limiter) interval() time.Duration {
	if l.Interval > 0 {
		return l.Interval
	}
	return DefaultInterval
}
