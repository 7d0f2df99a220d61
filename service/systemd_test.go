package service

import (
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ss-bridge/ss-bridge/notify"
	"github.com/ss-bridge/ss-bridge/supervisor"
)

// The observer's mapping of the supervisor's events to sd_notify messages, read from a
// real datagram socket standing in for systemd's NOTIFY_SOCKET.
func TestObserverNotifiesSystemd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	m, err := notify.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	sd := &systemd{manager: m}
	sd.q = sd.queue()
	defer sd.q.Close(time.Second)
	observe := sd.observer(time.Second)

	receive := func() string {
		t.Helper()
		buf := make([]byte, 8192)
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("waiting for a notification: %v", err)
		}
		return string(buf[:n])
	}
	long := strings.Repeat("x", 5000)
	exited := errors.New("new worker 11 exited with status 256 before it was ready")
	for _, step := range []struct {
		event supervisor.Event
		want  []string // a trailing '*' matches any rest
	}{
		{supervisor.Event{Kind: supervisor.Spawned, Generation: 1, PID: 10, Summary: "generation 1 (pid 10) starting"},
			[]string{"STATUS=generation 1 (pid 10) starting", "EXTEND_TIMEOUT_USEC=6000000"}},
		{supervisor.Event{Kind: supervisor.Started, Generation: 1, PID: 10, Summary: "generation 1 (pid 10) serving"},
			[]string{"STATUS=generation 1 (pid 10) serving", "READY=1"}},
		{supervisor.Event{Kind: supervisor.WorkerStatus, Generation: 1, PID: 10, Text: long, Summary: "generation 1 (pid 10) serving: " + long},
			[]string{"STATUS=generation 1 (pid 10) serving: xxx*"}},
		{supervisor.Event{Kind: supervisor.Heartbeat}, []string{"WATCHDOG=1"}},
		{supervisor.Event{Kind: supervisor.Reloading, Summary: "generation 1 (pid 10) serving"},
			[]string{"STATUS=generation 1 (pid 10) serving", "RELOADING=1\nMONOTONIC_USEC=*"}},
		{supervisor.Event{Kind: supervisor.Spawned, Generation: 2, PID: 11, Summary: "generation 1 (pid 10) serving; generation 2 (pid 11) starting"},
			[]string{"STATUS=generation 1 (pid 10) serving; generation 2 (pid 11) starting", "EXTEND_TIMEOUT_USEC=6000000"}},
		// A failed reload ends the reload: systemctl reload must not hang.
		{supervisor.Event{Kind: supervisor.StartFailed, Generation: 2, PID: 11, Err: exited, Summary: "generation 1 (pid 10) serving"},
			[]string{"STATUS=reload failed: new worker 11 exited with status 256 before it was ready; generation 1 (pid 10) serving", "READY=1"}},
		// The failure stays in the status until the next reload: the exits of
		// the workers it stopped must not wipe it out.
		{supervisor.Event{Kind: supervisor.Exited, Generation: 2, PID: 11, Summary: "generation 1 (pid 10) serving"},
			[]string{"STATUS=reload failed: new worker 11 exited with status 256 before it was ready; generation 1 (pid 10) serving"}},
		{supervisor.Event{Kind: supervisor.Reloading, Summary: "s1"}, []string{"STATUS=s1", "RELOADING=1\nMONOTONIC_USEC=*"}},
		{supervisor.Event{Kind: supervisor.Spawned, Generation: 3, PID: 12, Summary: "s2"}, []string{"STATUS=s2", "EXTEND_TIMEOUT_USEC=6000000"}},
		// READY=1 only once the old generation was told to go.
		{supervisor.Event{Kind: supervisor.Started, Generation: 3, PID: 12, Summary: "s3"}, []string{"STATUS=s3"}},
		{supervisor.Event{Kind: supervisor.Reloaded, Generation: 3, PID: 12, Summary: "s4"}, []string{"STATUS=s4", "READY=1"}},
		{supervisor.Event{Kind: supervisor.Exited, Generation: 2, PID: 10, Summary: "s5"}, []string{"STATUS=s5"}},
		// Not reloading: a worker that died soon after starting is only a status.
		{supervisor.Event{Kind: supervisor.StartFailed, Generation: 4, PID: 13, Status: 256, Summary: "s6"},
			[]string{"STATUS=start failed: worker 13 exited with status 256; s6"}},
		{supervisor.Event{Kind: supervisor.Stopping, Summary: "stopping; s7"}, []string{"STATUS=stopping; s7", "STOPPING=1"}},
	} {
		observe(step.event)
		for _, want := range step.want {
			got := receive()
			if len(got) >= 4096 {
				t.Errorf("event %v: a datagram of %d bytes", step.event.Kind, len(got))
			}
			if prefix, ok := strings.CutSuffix(want, "*"); ok {
				if !strings.HasPrefix(got, prefix) {
					t.Errorf("event %v: got %.80q, want %q...", step.event.Kind, got, prefix)
				}
			} else if got != want {
				t.Errorf("event %v: got %q, want %q", step.event.Kind, got, want)
			}
		}
	}
	conn.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if n, err := conn.Read(make([]byte, 8192)); err == nil {
		t.Errorf("an unexpected notification of %d bytes", n)
	}
}
