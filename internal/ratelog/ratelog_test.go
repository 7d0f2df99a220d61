package ratelog

import (
	"strings"
	"sync"
	"testing"
	"time"
)

type lines struct {
	mu sync.Mutex
	l  []string
}

func (s *lines) write(line string) { s.mu.Lock(); s.l = append(s.l, line); s.mu.Unlock() }
func (s *lines) get() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.l...)
}

func TestFloodIsOneLineAndACount(t *testing.T) {
	var out lines
	l := &Limiter{Interval: time.Hour, Burst: 2, What: "things happened", Write: out.write}
	for i := range 20000 {
		l.Log("thing " + strings.Repeat("x", i%3))
	}
	if got := out.get(); len(got) != 2 || got[0] != "thing " || got[1] != "thing x" {
		t.Fatalf("before Flush: %q", got)
	}
	l.Flush()
	want := []string{"thing ", "thing x", "... and 19998 more things happened"}
	if got := out.get(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q, want %q", got, want)
	}
	l.Flush()
	if got := out.get(); len(got) != 3 {
		t.Fatalf("a second Flush wrote again: %q", got)
	}
}

func TestSummaryComesAfterTheInterval(t *testing.T) {
	var out lines
	l := &Limiter{Interval: 50 * time.Millisecond, Burst: 1, What: "more", Write: out.write}
	l.Log("a")
	l.Log("b")
	l.Log("c")
	deadline := time.Now().Add(5 * time.Second)
	for len(out.get()) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := out.get(); len(got) != 2 || got[1] != "... and 2 more more" {
		t.Fatalf("got %q", got)
	}
	// Quiet for an interval after the summary: the next line is written.
	time.Sleep(120 * time.Millisecond)
	l.Log("d")
	if got := out.get(); len(got) != 3 || got[2] != "d" {
		t.Fatalf("got %q", got)
	}
	l.Flush()
}
