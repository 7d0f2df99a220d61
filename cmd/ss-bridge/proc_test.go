package main

// Tests of issue 8's process hardening: signal dispositions passed to workers, SIGQUIT,
// the --log-file command dying, files opened through symlinks, the pid-file lock, and
// --daemonize's errors and readiness.

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// sigIgnWorker writes the SigIgn mask of its shell to dir/sigign and sleeps.
func sigIgnWorker(dir string) []string {
	f := filepath.Join(dir, "sigign")
	return []string{"sh", "-c", `grep '^SigIgn:' /proc/$$/status > '` + f + `.tmp' && mv '` + f + `.tmp' '` + f + `'; exec sleep 1000`}
}

func readSigIgn(t *testing.T, dir string) uint64 {
	t.Helper()
	f := filepath.Join(dir, "sigign")
	data := waitFileContains(t, f, 10*time.Second, "SigIgn:")
	mask, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(data), "SigIgn:")), 16, 64)
	if err != nil {
		t.Fatalf("%s: %q: %v", f, data, err)
	}
	return mask
}

func sigBit(sig syscall.Signal) uint64 { return 1 << (uint(sig) - 1) }

func describeMask(mask uint64) string {
	var names []string
	for sig := syscall.Signal(1); sig < 65; sig++ {
		if mask&sigBit(sig) != 0 {
			names = append(names, sig.String())
		}
	}
	return fmt.Sprintf("%#x %q", mask, names)
}

// A worker starts with the signal dispositions it gets under Perl's start_server: SIGPIPE
// ignored, and signals ignored by ss-bridge's parent still ignored, as far as a Go program
// can see them (see the README: of the signals Go's runtime takes over at start, their
// inherited SIG_IGN is lost, here SIGUSR1).
func TestWorkerSignalDispositionsMatchPerl(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat("/usr/bin/start_server"); err != nil {
		t.Skip("Perl's start_server is not installed")
	}
	// The parent of both superdaemons ignores these; exec keeps SIG_IGN.
	wrapper := []string{"-e", `$SIG{$_} = "IGNORE" for qw(USR1 TTOU TSTP HUP); exec @ARGV or die "exec: $!"`}
	run := func(bin string, opts ...string) uint64 {
		dir := t.TempDir()
		b := startBridgeWith(t, bridgeConfig{bin: "perl"}, append(append(wrapper, bin), cmdArgs(append([]string{"--interval=0"}, opts...), sigIgnWorker(dir))...)...)
		mask := readSigIgn(t, dir)
		b.signal(syscall.SIGTERM)
		b.wait(5 * time.Second)
		return mask
	}
	perl := run("/usr/bin/start_server")
	ours := run(e2eBridgeBin)
	// With --listen-fds the worker is started through a re-executed ss-bridge.
	oursShim := run(e2eBridgeBin, "--listen-fds")
	if perl&sigBit(syscall.SIGPIPE) == 0 {
		t.Fatalf("Perl's worker does not ignore SIGPIPE: %s", describeMask(perl))
	}
	lost := sigBit(syscall.SIGUSR1) // ignored at our start, but invisible to a Go program
	if ours != perl&^lost {
		t.Errorf("worker's SigIgn under ss-bridge %s, under start_server %s (less USR1: %s)",
			describeMask(ours), describeMask(perl), describeMask(perl&^lost))
	}
	if oursShim != ours {
		t.Errorf("worker's SigIgn under ss-bridge --listen-fds %s, without %s", describeMask(oursShim), describeMask(ours))
	}
}

// SIGQUIT stops the server as TERM does, and leaves no pid, status or socket file.
func TestQuitCleansUp(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile, statusFile, sock := filepath.Join(dir, "pid"), filepath.Join(dir, "status"), filepath.Join(dir, "s.sock")
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--pid-file=" + pidFile, "--status-file=" + statusFile, "--path=" + sock}, goWorker())...)
	w := b.worker(1, 5*time.Second)
	waitStatus(t, statusFile, statusLine(1, w), 5*time.Second)
	b.waitLine(5*time.Second, `gen 1 serving`, 1)
	b.signal(syscall.SIGQUIT)
	if code := b.wait(5 * time.Second); code != 0 {
		t.Errorf("exit code %d after SIGQUIT, want 0", code)
	}
	b.expectSequence(fmt.Sprintf(`^received QUIT, sending TERM to all workers:%d$`, w), fmt.Sprintf(`^worker %d got TERM$`, w), `^exiting$`)
	for _, f := range []string{pidFile, statusFile, sock} {
		if fileExists(f) {
			t.Errorf("%s left behind after SIGQUIT", f)
		}
	}
}
