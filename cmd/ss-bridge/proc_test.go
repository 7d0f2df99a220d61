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
	// A pool handles TTIN and TTOU, so they reach its workers as default,
	// as every signal the bridge handles does.
	if ours&sigBit(syscall.SIGTTOU) == 0 {
		t.Errorf("the worker lost the inherited SIG_IGN of TTOU: %s", describeMask(ours))
	}
	if pooled := run(e2eBridgeBin, "--workers=1"); pooled != ours&^sigBit(syscall.SIGTTOU) {
		t.Errorf("worker's SigIgn under ss-bridge --workers=1 %s, want %s", describeMask(pooled), describeMask(ours&^sigBit(syscall.SIGTTOU)))
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

// stickyDir returns a new world-writable sticky directory (such as /tmp) owned by us, and
// a file of ours elsewhere holding "secret\n" that a planted symlink points at.
func stickyDir(t *testing.T) (dir, target string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: plants symlinks owned by another user")
	}
	dir = t.TempDir()
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	target = filepath.Join(t.TempDir(), "target")
	if err := os.WriteFile(target, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, target
}

func checkUntouched(t *testing.T, target string) {
	t.Helper()
	if data, err := os.ReadFile(target); err != nil || string(data) != "secret\n" {
		t.Errorf("the symlink's target was written to: %q (err %v)", data, err)
	}
}

// No pid, status or log file is opened through a symlink planted by another user in a
// sticky world-writable directory.
func TestFilesNotOpenedThroughSymlinks(t *testing.T) {
	t.Parallel()
	t.Run("pid-file", func(t *testing.T) {
		t.Parallel()
		dir, target := stickyDir(t)
		pidFile := filepath.Join(dir, "pid")
		os.Symlink(target, pidFile)
		r := runBridgeCmd(t, 5*time.Second, nil, "--interval=0", "--pid-file="+pidFile, "--", "sleep", "1000")
		if r.code != 1 || !strings.Contains(r.stderr, "pid file "+pidFile+" is a symlink; refusing to follow it") {
			t.Errorf("exit %d (timed out %v), stderr %q", r.code, r.timedOut, r.stderr)
		}
		checkUntouched(t, target)
	})
	t.Run("log-file", func(t *testing.T) {
		t.Parallel()
		dir, target := stickyDir(t)
		logFile := filepath.Join(dir, "log")
		os.Symlink(target, logFile)
		if err := os.Lchown(logFile, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		r := runBridgeCmd(t, 5*time.Second, nil, "--interval=0", "--log-file="+logFile, "--", "sleep", "1000")
		if r.code != 1 || !strings.Contains(r.stderr, "log file "+logFile+" is a symlink owned by uid 65534, neither us nor the owner of its directory; refusing to follow it") {
			t.Errorf("exit %d (timed out %v), stderr %q", r.code, r.timedOut, r.stderr)
		}
		checkUntouched(t, target)
		// A symlink of the directory's owner is followed.
		_, target = stickyDir(t)
		mine := filepath.Join(dir, "mine")
		os.Symlink(target, mine)
		b := startBridge(t, cmdArgs([]string{"--interval=0", "--log-file=" + mine}, []string{"sleep", "1000"})...)
		data := waitFileContains(t, target, 5*time.Second, "secret\nstarting new worker")
		b.signal(syscall.SIGTERM)
		if code := b.wait(5 * time.Second); code != 0 {
			t.Errorf("exit %d with a log file through our own symlink; log: %q", code, data)
		}
	})
	t.Run("status-file", func(t *testing.T) {
		t.Parallel()
		dir, target := stickyDir(t)
		statusFile := filepath.Join(dir, "status")
		b := startBridge(t, cmdArgs([]string{"--interval=1", "--status-file=" + statusFile}, []string{"sleep", "1000"})...)
		w := b.worker(1, 5*time.Second)
		// 0.35's temporary file, and the status file itself.
		for _, p := range []string{fmt.Sprintf("%s.%d", statusFile, b.pid), statusFile} {
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
			os.Lchown(p, 65534, 65534)
		}
		waitStatus(t, statusFile, statusLine(1, w), 5*time.Second)
		if st, err := os.Lstat(statusFile); err != nil || !st.Mode().IsRegular() {
			t.Errorf("status file is not a regular file: %v %v", st.Mode(), err)
		}
		checkUntouched(t, target)
	})
}

// A --log-file command that exits is restarted, with backoff; meanwhile the log goes to the
// bridge's stderr, which says so; no worker dies of writing to the pipe, and the service
// keeps answering, restarts included.
func TestDeadLogCommandIsRestarted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logFile := filepath.Join(dir, "log")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// Each head passes on the first 20 bytes it reads and exits.
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--port=" + addr, "--log-file=| head -c 20 >> '" + logFile + "'"}, goWorker())...)
	waitServing(t, addr, 1, 5*time.Second)
	for gen := 2; gen <= 4; gen++ {
		b.signal(syscall.SIGHUP)
		waitServing(t, addr, gen, 5*time.Second)
		b.waitLine(5*time.Second, `^ss-bridge: log command "head -c 20 >> '.*'" \(pid \d+\) exited; keeping the log for it until it is restarted$`, gen-1)
		b.waitLine(5*time.Second, `^ss-bridge: log command "head -c 20 >> '.*'" restarted after .* \(pid \d+\)$`, gen-1)
	}
	// Every restarted head got its 20 bytes of the log.
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, _ := os.ReadFile(logFile)
		if len(data) >= 3*20 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the log file holds %d bytes, want at least 60 from 3 heads: %q", len(data), data)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := b.count(`died unexpectedly|seems to have failed to start`); n != 0 {
		t.Errorf("%d workers died", n)
	}
	b.signal(syscall.SIGTERM)
	if code := b.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
}

// What the workers write while the log command is down waits for its restart, in order,
// rather than going to the stderr ss-bridge started with (which is /dev/null with
// --daemonize).
func TestLogWaitsForTheRestartedCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logFile := filepath.Join(dir, "log")
	// The first command takes one line and exits; the next one takes the rest. sh's read
	// takes no more than the line from a pipe, so the command itself loses nothing.
	command := fmt.Sprintf(`| if [ -e '%[1]s.once' ]; then exec cat >> '%[1]s'; fi; touch '%[1]s.once'; read -r l; echo "$l" >> '%[1]s'`, logFile)
	b := startBridge(t, "--interval=0", "--log-file="+command, "--",
		"sh", "-c", "i=0; while :; do i=$((i+1)); echo \"line $i\"; sleep 0.01; done")
	b.waitLine(10*time.Second, `^ss-bridge: log command .* restarted after .* \(pid \d+\)$`, 1)
	waitFileContains(t, logFile, 10*time.Second, "line 50\n")
	b.signal(syscall.SIGTERM)
	if code := b.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	want := 1
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if !strings.HasPrefix(l, "line ") {
			continue // ss-bridge's own lines
		}
		if l != fmt.Sprintf("line %d", want) {
			t.Fatalf("the log has %q where %q belongs: lines written while the command was down went elsewhere\n%s", l, fmt.Sprintf("line %d", want), data)
		}
		want++
	}
	if b.count(`^line \d+$`) != 0 {
		t.Errorf("worker lines reached ss-bridge's stderr: %q", b.log.String())
	}
}

// A log command that stays down does not stop the workers: once its pipe is mostly full,
// what arrives goes to the stderr ss-bridge started with, so writers never block.
func TestLogOfACommandThatStaysDownOverflowsToStderr(t *testing.T) {
	t.Parallel()
	// true reads nothing and exits: the pipe only fills. Lines of 1 KiB, as fast as sh
	// writes them.
	b := startBridge(t, "--interval=0", "--log-file=| true", "--",
		"sh", "-c", "i=0; while :; do i=$((i+1)); printf 'line %d %01000d\\n' $i 0; done")
	b.waitLine(20*time.Second, `^ss-bridge: the log command is still down and its pipe is full; writing the log here until it is restarted$`, 1)
	// The worker goes on writing: its lines keep arriving on stderr.
	n := b.count(`^line \d+ 0+$`)
	deadline := time.Now().Add(10 * time.Second)
	for b.count(`^line \d+ 0+$`) < n+1000 {
		if time.Now().After(deadline) {
			t.Fatalf("the worker's lines stopped arriving (%d, then %d)", n, b.count(`^line \d+ 0+$`))
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.signal(syscall.SIGTERM)
	if code := b.wait(10 * time.Second); code != 0 {
		t.Errorf("exit code %d", code)
	}
}

// badExecutable is a worker that passes the start-up check (an executable regular file) but
// cannot be executed.
func badExecutable(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bad-worker")
	if err := os.WriteFile(p, []byte("\x7fELF garbage"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// Why a start with --log-file or --daemonize failed is said on the terminal, not only in the
// log.
func TestStartErrorsReachTheTerminal(t *testing.T) {
	t.Parallel()
	t.Run("log-file", func(t *testing.T) {
		t.Parallel()
		logFile := filepath.Join(t.TempDir(), "log")
		r := runBridgeCmd(t, 10*time.Second, nil, "--interval=0", "--log-file="+logFile, "--", badExecutable(t))
		if r.code != 1 || !strings.Contains(r.stderr, "exec format error") {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
		waitFileContains(t, logFile, time.Second, "failed to start: failed to exec", "exec format error")
	})
	t.Run("daemonize", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		pidFile := filepath.Join(dir, "pid")
		r := runBridgeCmd(t, 10*time.Second, nil, "--daemonize", "--interval=0", "--log-file="+filepath.Join(dir, "log"), "--pid-file="+pidFile, "--", badExecutable(t))
		if r.code != 1 || !strings.Contains(r.stderr, "exec format error") {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
		time.Sleep(200 * time.Millisecond)
		if fileExists(pidFile) {
			t.Errorf("pid file left behind")
		}
	})
	t.Run("daemonize-bad-log", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		pidFile, sock := filepath.Join(dir, "pid"), filepath.Join(dir, "s.sock")
		r := runBridgeCmd(t, 10*time.Second, nil, "--daemonize", "--interval=0", "--log-file=/nonexistent/dir/log",
			"--pid-file="+pidFile, "--path="+sock, "--", "sleep", "1000")
		if r.code != 1 || !strings.Contains(r.stderr, "failed to open log file /nonexistent/dir/log: no such file or directory") {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
		time.Sleep(200 * time.Millisecond)
		for _, f := range []string{pidFile, sock} {
			if fileExists(f) {
				t.Errorf("%s left behind", f)
			}
		}
	})
	t.Run("daemonize-first-worker-fails", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		pidFile := filepath.Join(dir, "pid")
		r := runBridgeCmd(t, 10*time.Second, nil, "--daemonize", "--interval=1", "--log-file="+filepath.Join(dir, "log"), "--pid-file="+pidFile, "--", "sh", "-c", "exit 3")
		t.Cleanup(func() { runBridgeCmd(t, 10*time.Second, nil, "stop", "--pid-file="+pidFile, "--timeout=5", "--force") })
		if r.code != 1 || !re(`the first worker failed to start: new worker \d+ exited with status 768 before it was ready; the daemon \(pid \d+\) keeps trying, see `).MatchString(r.stderr) {
			t.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
	})
}

// --daemonize returns once the first generation has started, so the status file lists it.
func TestDaemonizeReturnsWithTheFirstGenerationListed(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile, statusFile := filepath.Join(dir, "pid"), filepath.Join(dir, "status")
	r := runBridgeCmd(t, 10*time.Second, nil, "--daemonize", "--interval=0.5", "--log-file="+filepath.Join(dir, "log"),
		"--pid-file="+pidFile, "--status-file="+statusFile, "--", "sleep", "1000")
	t.Cleanup(func() { runBridgeCmd(t, 10*time.Second, nil, "stop", "--pid-file="+pidFile, "--timeout=5", "--force") })
	if r.code != 0 {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	content, gens, err := readStatusFile(statusFile)
	if err != nil || len(gens) != 1 || gens[0].gen != 1 {
		t.Errorf("status file right after --daemonize returned: %q (err %v)", content, err)
	}
}

// The pid file goes last: once stop returns (it waits for the pid file's lock), nothing of
// the server is left, even when its log command takes a while to finish and the server
// waits for it. A new server started at once must not find the control socket or a unix
// socket "in use".
func TestStopReturnsWithEveryFileGone(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile, sock := filepath.Join(dir, "pid"), filepath.Join(dir, "s.sock")
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--pid-file=" + pidFile, "--path=" + sock,
		"--log-file=| cat > /dev/null; sleep 1"}, []string{"sleep", "1000"})...)
	for deadline := time.Now().Add(5 * time.Second); !fileExists(pidFile) || !fileExists(pidFile+".ctl"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no pid file and control socket")
		}
	}
	if r := runBridgeCmd(t, 10*time.Second, nil, "stop", "--pid-file="+pidFile, "--timeout=5"); r.code != 0 {
		t.Fatalf("stop: exit %d: %q", r.code, r.stderr)
	}
	for _, f := range []string{pidFile + ".ctl", sock, pidFile} {
		if fileExists(f) {
			t.Errorf("%s still there when stop returned", f)
		}
	}
	b.wait(10 * time.Second)
}

// stop --force removes the pid and status files of the server it killed.
func TestForcedStopRemovesStaleFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile, statusFile := filepath.Join(dir, "pid"), filepath.Join(dir, "status")
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--pid-file=" + pidFile, "--status-file=" + statusFile}, goWorker("-ignore-term"))...)
	w := b.worker(1, 5*time.Second)
	waitStatus(t, statusFile, statusLine(1, w), 5*time.Second)
	b.waitLine(5*time.Second, `gen 1 serving`, 1)
	if !fileExists(pidFile + ".ctl") {
		t.Fatalf("no control socket %s.ctl", pidFile)
	}
	r := runBridgeCmd(t, 10*time.Second, nil, "stop", "--pid-file="+pidFile, "--status-file="+statusFile, "--timeout=0.5", "--force")
	if r.code != 0 {
		t.Fatalf("exit %d: %q", r.code, r.stderr)
	}
	for _, f := range []string{pidFile, statusFile, pidFile + ".ctl"} {
		if fileExists(f) {
			t.Errorf("%s left behind by stop --force", f)
		}
	}
}
