// Package ratelog bounds the log lines of events that can come in floods,
// such as datagrams from strangers or exits of orphaned processes, without
// hiding how many there were.
package ratelog

import (
	"fmt"
	"sync"
	"time"
)

// Limiter writes the first Burst lines of a kind in an Interval, then, while
// more keep coming, one summary line "... and N more <What>" at most once
// per Interval, so a flood of any size costs a few lines a minute while a
// few events are each logged. It is safe for concurrent use; Write is
// called with the Limiter locked, so lines keep their order and Write must
// not call back into the Limiter.
type Limiter struct {
	// Interval is the length of the windows in which Burst lines are
	// written; 0 means DefaultInterval.
	Interval time.Duration
	// Burst is how many lines a window writes before it counts them; 0
	// means DefaultBurst.
	Burst int
	// What names the events in a summary, in the plural: "notify messages
	// ignored" gives "... and 12 more notify messages ignored".
	What string
	// Write writes one line, without its line break.
	Write func(line string)

	mu         sync.Mutex
	windowEnd  time.Time
	written    int // lines written in the window
	suppressed int // lines counted since the last summary
	timer      *time.Timer
}

// The defaults of a Limiter's Interval and Burst.
const (
	DefaultInterval = 10 * time.Second
	DefaultBurst    = 5
)

// Log writes line, or counts it when its window has written Burst lines
// already; the count is written when the window ends, or by Flush.
func (l *Limiter) Log(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.suppressed == 0 && !now.Before(l.windowEnd) {
		l.windowEnd, l.written = now.Add(l.interval()), 0
	}
	if l.written < l.burst() {
		l.written++
		l.Write(line)
		return
	}
	l.suppressed++
	if l.timer == nil {
		l.timer = time.AfterFunc(l.windowEnd.Sub(now), l.summarize)
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
		// A flood that goes on gets only its next count, an Interval later.
		l.windowEnd, l.written = time.Now().Add(l.interval()), l.burst()
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

func (l *Limiter) burst() int {
	if l.Burst > 0 {
		return l.Burst
	}
	return DefaultBurst
}

func (l *Limiter) interval() time.Duration {
	if l.Interval > 0 {
		return l.Interval
	}
	return DefaultInterval
}
