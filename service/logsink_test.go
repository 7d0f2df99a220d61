package service

import (
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A self-upgrade hands over the log command's pidfd, not only its pid: the command may
// exit, be reaped and its pid be taken by another process between the old image's snapshot
// and the new image's adoption. Here the state's pid is a live process that is not the
// command, and its pidfd is the command, which has exited: the adopted log must see the
// command gone.
func TestAdoptedLogWatchesTheCommandByItsPidfd(t *testing.T) {
	other := exec.Command("sleep", "60")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	var exited int
	gone := exec.Command("true")
	gone.SysProcAttr = &syscall.SysProcAttr{PidFD: &exited}
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	fallback, err := unix.Dup(2)
	if err != nil {
		t.Fatal(err)
	}
	l := adoptLog(&LogState{FD: p[1], FallbackFD: fallback, Command: "cat", ReadEnd: p[0], PID: other.Process.Pid, PIDFD: exited})
	defer func() {
		l.pidfd.Close()
		unix.Close(p[0])
		unix.Close(p[1])
		l.fallback.Close()
	}()
	if l.pidfd == nil {
		t.Fatal("no pidfd adopted")
	}
	done := make(chan bool, 1)
	go func() { done <- waitReadable(l.pidfd) }()
	select {
	case ok := <-done:
		if !ok {
			t.Fatal("the pidfd was closed")
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("the adopted log watches pid %d, which runs, rather than the command that exited", other.Process.Pid)
	}
}
