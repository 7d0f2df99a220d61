package testkit

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// recorder is a testing.TB that keeps what Finish reports.
type recorder struct {
	testing.TB
	logs, errs []string
}

func (r *recorder) Helper()                      {}
func (r *recorder) Logf(format string, a ...any) { r.logs = append(r.logs, fmt.Sprintf(format, a...)) }
func (r *recorder) Errorf(format string, a ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, a...))
}

func TestAskReadsTheTestWorkersAnswer(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			fmt.Fprint(w, "hello\n")
			return
		}
		fmt.Fprint(w, "pid=42 gen=7\n")
	}))
	defer srv.Close()
	if pid, gen, err := Ask(srv.Client(), srv.URL+"/"); err != nil || pid != 42 || gen != 7 {
		t.Errorf("Ask = %d, %d, %v", pid, gen, err)
	}
	if _, _, err := Ask(srv.Client(), srv.URL+"/bad"); err == nil {
		t.Error("Ask took hello for an answer")
	}
}

// Finish passes a load that was all answered, and fails one with a failed
// request, counting refusals apart.
func TestLoadFinishFailsOnAnyFailedRequest(t *testing.T) {
	var n atomic.Int64
	l := StartLoad(3, 0, func(int) (int, error) {
		switch n.Add(1) {
		case 5:
			return 0, fmt.Errorf("dial: %w", syscall.ECONNREFUSED)
		case 9:
			return 0, errors.New("EOF")
		}
		return 2, nil
	})
	for n.Load() < 50 {
		time.Sleep(time.Millisecond)
	}
	r := &recorder{TB: t}
	l.Finish(r, "test load")
	if len(r.errs) != 1 || !strings.Contains(r.errs[0], "test load: 2 of ") || !strings.Contains(r.errs[0], "1 of them refused") {
		t.Errorf("errors %q", r.errs)
	}
	if len(r.logs) != 1 || !strings.Contains(r.logs[0], "answered by 1 generations ([2])") {
		t.Errorf("logs %q", r.logs)
	}

	l = StartLoad(2, time.Millisecond, func(client int) (int, error) { return client, nil })
	time.Sleep(20 * time.Millisecond)
	r = &recorder{TB: t}
	l.Finish(r, "good load")
	if len(r.errs) != 0 || !strings.Contains(r.logs[0], "answered by 2 generations ([0 1])") {
		t.Errorf("a good load: errors %q, logs %q", r.errs, r.logs)
	}
}

func TestFreePortsAreDistinctAndFree(t *testing.T) {
	ports, err := FreePorts(5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] || p == 0 {
			t.Fatalf("ports %v", ports)
		}
		seen[p] = true
	}
}
