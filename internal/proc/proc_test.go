package proc

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func TestParentReadsStatWithAnAwkwardCommandName(t *testing.T) {
	if ppid, err := Parent(os.Getpid()), error(nil); err != nil || ppid != os.Getppid() {
		t.Fatalf("Parent(self) = %d, %v; want %d", ppid, err, os.Getppid())
	}
	// A command name with ") R 1 (" fools a parser that looks for the first ')'.
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip(err)
	}
	awkward := filepath.Join(t.TempDir(), "x) R 1 (y")
	if err := os.Symlink(sleep, awkward); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(awkward, "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if ppid, err := Parent(cmd.Process.Pid), error(nil); err == nil && ppid == os.Getpid() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("Parent never found the test process")
}

func TestAliveAndChildren(t *testing.T) {
	cmd := exec.Command("sleep", "10")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	found := false
	for _, c := range Children(os.Getpid()) {
		found = found || c.PID == pid
	}
	if !found || !Alive(pid) || FDCount(pid) < 3 {
		t.Fatalf("child %d: found %v, alive %v, fds %d", pid, found, Alive(pid), FDCount(pid))
	}
	cmd.Process.Kill()
	if !WaitDead(pid, 5*time.Second) {
		t.Fatal("a killed child (a zombie until reaped) counts as alive")
	}
	cmd.Wait()
	if Alive(pid) || Parent(pid) != -1 || FDCount(pid) != -1 {
		t.Fatal("a reaped child still shows")
	}
	if rss, ok := StatusField("/proc/self/status", "VmRSS"); !ok || rss <= 0 {
		t.Fatalf("VmRSS %d %v", rss, ok)
	}
}
