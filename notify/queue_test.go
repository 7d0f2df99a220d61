package notify

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// fill queues datagrams to addr until its receive queue is full: a fresh
// socket cannot send either. (One socket alone may first run out of its own
// send buffer.) The fillers are closed when the test ends.
func fill(t *testing.T, addr string) int {
	t.Helper()
	sent := 0
	for range 64 {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		first := true
		for {
			err := unix.Sendto(fd, []byte("FILLER=1"), 0, &unix.SockaddrUnix{Name: addr})
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			sent++
			first = false
		}
		if first {
			return sent
		}
	}
	t.Fatal("the receive queue never filled")
	return 0
}

// drain reads n datagrams and returns those that are not fillers.
func (s *serviceManager) drain(n int) []string {
	s.t.Helper()
	var out []string
	for range n {
		msg, _ := s.receive()
		if msg != "FILLER=1" {
			out = append(out, msg)
		}
	}
	return out
}

// A stuck service manager (a full queue, never read) costs the Queue's
// callers nothing; what they queued arrives in order once it reads again,
// with the statuses and watchdog pings coalesced.
func TestQueueNeverWaitsForAStuckServiceManager(t *testing.T) {
	sm := listenAsServiceManager(t, filepath.Join(t.TempDir(), "notify"))
	fillers := fill(t, sm.conn.LocalAddr().String())
	q := fromEnv(t).Queue(func(err error) { t.Errorf("reported: %v", err) })

	begin := time.Now()
	q.Status("a")
	q.State("READY=1")
	for i := range 1000 {
		q.Status("b" + strings.Repeat(".", i%7))
		q.Watchdog()
	}
	q.Status("c")
	q.State("STOPPING=1")
	if took := time.Since(begin); took > 500*time.Millisecond {
		t.Errorf("queueing took %v with a stuck service manager", took)
	}

	got := sm.drain(fillers + 5)
	want := []string{"WATCHDOG=1", "STATUS=a", "READY=1", "STATUS=c", "STOPPING=1"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("received %q, want %q", got, want)
	}
	if err := q.Close(5 * time.Second); err != nil {
		t.Error(err)
	}
}

func TestQueueCloseGivesUpOnAStuckServiceManager(t *testing.T) {
	sm := listenAsServiceManager(t, filepath.Join(t.TempDir(), "notify"))
	fill(t, sm.conn.LocalAddr().String())
	q := fromEnv(t).Queue(nil)
	q.State("STOPPING=1")
	begin := time.Now()
	err := q.Close(200 * time.Millisecond)
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("Close took %v", took)
	}
	if err == nil || !strings.Contains(err.Error(), "1 notifications not sent") {
		t.Errorf("Close: %v", err)
	}
	if err := q.State("READY=1"); err == nil {
		t.Error("State after Close: no error")
	}
}

// A long status is cut, so that no datagram reaches systemd's limit, and
// the cut does not split a character.
func TestStatusIsCutBelowSystemdsLimit(t *testing.T) {
	sm := listenAsServiceManager(t, filepath.Join(t.TempDir(), "notify"))
	m := fromEnv(t)
	long := strings.Repeat("é", 5000)
	q := m.Queue(func(err error) { t.Errorf("reported: %v", err) })
	defer q.Close(time.Second)
	q.Status(long)
	if err := m.Status(long); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		msg, _ := sm.receive()
		text, ok := strings.CutPrefix(msg, "STATUS=")
		if !ok || len(msg) >= 4096 || len(text) > MaxStatusLen || !utf8.ValidString(text) || !strings.HasSuffix(text, "é...") {
			t.Errorf("sent %d bytes: %.40q...", len(msg), msg)
		}
	}
	if err := m.Send("READY=1", "STATUS="+strings.Repeat("x", 4100)); err == nil {
		t.Error("Send of a datagram systemd would ignore: no error")
	}
}

func TestQueueReportsAnAbsentServiceManager(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "absent"))
	errs := make(chan error, 10)
	q := fromEnv(t).Queue(func(err error) { errs <- err })
	q.State("READY=1")
	select {
	case err := <-errs:
		if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), "(READY)") {
			t.Errorf("reported %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing reported")
	}
	if err := q.Close(time.Second); err != nil {
		t.Error(err)
	}
}

func TestQueueWithoutNotifySocketSendsNothing(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	q := fromEnv(t).Queue(nil)
	if q.State("READY=1") != nil || q.Status("x") != nil || q.Watchdog() != nil || q.Close(time.Second) != nil {
		t.Error("a Queue without a service manager returned an error")
	}
	var nilQueue *Queue
	if nilQueue.State("READY=1") != nil || nilQueue.Close(time.Second) != nil {
		t.Error("a nil Queue returned an error")
	}
}

// systemd ignores a STATUS= that is not valid UTF-8 ("not UTF-8 clean,
// ignoring"), so a worker's status in Latin-1 cost the bridge its whole
// status text, "generation N (pid P) serving" with it, and with it what
// `ss-bridge reload` reads to know which generation serves.
func TestStatusIsValidUTF8(t *testing.T) {
	sm := listenAsServiceManager(t, filepath.Join(t.TempDir(), "notify"))
	m := fromEnv(t)
	bad := "generation 1 (pid 7) serving: caf\xe9 \xff\xfe ok"
	q := m.Queue(func(err error) { t.Errorf("reported: %v", err) })
	defer q.Close(time.Second)
	q.Status(bad)
	if err := m.Status(bad); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		msg, _ := sm.receive()
		text, ok := strings.CutPrefix(msg, "STATUS=")
		if !ok || !utf8.ValidString(text) || !strings.HasPrefix(text, "generation 1 (pid 7) serving: caf") || !strings.HasSuffix(text, " ok") {
			t.Errorf("sent %q", msg)
		}
	}
	// Cut at the limit, the text stays valid too.
	q.Status(strings.Repeat("\xe9", 2*MaxStatusLen))
	msg, _ := sm.receive()
	if text, _ := strings.CutPrefix(msg, "STATUS="); !utf8.ValidString(text) || len(text) > MaxStatusLen {
		t.Errorf("sent %d bytes, valid UTF-8 %v", len(msg), utf8.ValidString(text))
	}
}
