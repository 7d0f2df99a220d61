package supervisor

// Tests of the supervisor's own cost (issue 11).

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// renames counts the files renamed to name in dir, with inotify. It watches
// the temporaries moved away too: inotify merges an event with an identical
// one just before it, and two renames to name in a row are identical.
type renames struct {
	fd   int
	name string
}

func watchRenames(t *testing.T, dir, name string) *renames {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_MOVED_FROM|unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	return &renames{fd: fd, name: name}
}

// count reads the renames since the last count.
func (r *renames) count(t *testing.T) int {
	t.Helper()
	n := 0
	buf := make([]byte, 64<<10)
	for {
		got, err := unix.Read(r.fd, buf)
		if err == unix.EAGAIN {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off+unix.SizeofInotifyEvent <= got; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			nameBytes := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
			if ev.Mask&unix.IN_MOVED_TO != 0 && strings.TrimRight(string(nameBytes), "\x00") == r.name {
				n++
			}
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

// Workers reaped in one turn of the loop rewrite the status file once: a
// rename on a busy disk blocks the loop for milliseconds, and the runtime's
// monitor thread polls throughout.
func TestStatusFileWrittenOncePerTurn(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "status")
	h := start(t, Config{Workers: 4, Interval: 0, StatusFile: path})
	h.waitEvent(Started, 1)
	h.signal(syscall.SIGHUP)
	h.waitEvent(Reloaded, 2)
	old := h.os.signalled(syscall.SIGTERM)
	if len(old) != 4 {
		t.Fatalf("%d old workers signalled, want 4:\n%s", len(old), h.log)
	}
	read := func() string { b, _ := os.ReadFile(path); return string(b) }
	h.waitFor("generation 2 and the 4 old workers listed", func() bool { return strings.Count(read(), "\n") == 8 })
	r := watchRenames(t, dir, "status")
	// The four exit before the loop can reap any: the fake OS's lock is
	// held throughout, and reaping takes it.
	h.os.mu.Lock()
	for _, pid := range old {
		h.os.exitLocked(pid, 0)
	}
	h.os.mu.Unlock()
	h.waitFor("generation 2 alone listed", func() bool { return strings.Count(read(), "\n") == 4 })
	time.Sleep(100 * time.Millisecond)
	if n := r.count(t); n != 1 {
		t.Errorf("the status file was rewritten %d times for 4 workers reaped in one turn, want once:\n%s", n, h.log)
	}
}
