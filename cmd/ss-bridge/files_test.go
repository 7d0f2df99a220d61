package main

import (
	"errors"
	"fmt"
	"github.com/ss-bridge/ss-bridge/internal/proc"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestStatusFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	status := filepath.Join(dir, "status")
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--kill-old-delay=1", "--status-file=" + status},
		[]string{"sleep", "1000"})...)
	w1 := b.worker(1, 5*time.Second)
	waitStatus(t, status, statusLine(1, w1), 3*time.Second)

	b.signal(syscall.SIGHUP)
	b.waitLine(5*time.Second, `^sleeping 1 secs before killing old workers$`, 1)
	w2 := b.worker(2, time.Second)
	if data, err := os.ReadFile(status); err != nil || string(data) != statusLine(1, w1)+statusLine(2, w2) {
		t.Errorf("during kill-old-delay the status file is %q (err %v), want %q", data, err, statusLine(1, w1)+statusLine(2, w2))
	}
	b.waitLine(3*time.Second, fmt.Sprintf(`^old worker %d died, status:15$`, w1), 1)
	waitStatus(t, status, statusLine(2, w2), time.Second)

	b.signal(syscall.SIGTERM)
	if code := b.wait(5 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if fileExists(status) {
		t.Errorf("status file %s left behind after exit", status)
	}
}

// Generations are listed in numeric order: 10 after 9. The workers ignore USR1, the
// --signal-on-hup signal, so every generation stays alive.
func TestStatusFileNumericOrder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	status := filepath.Join(dir, "status")
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--signal-on-hup=USR1", "--status-file=" + status},
		[]string{"sh", "-c", `trap "" USR1; exec sleep 1000`})...)
	want := ""
	for gen := 1; gen <= 11; gen++ {
		if gen > 1 {
			b.signal(syscall.SIGHUP)
		}
		w := b.worker(gen, 5*time.Second)
		// USR1 kills the worker until its shell has run trap: wait for the exec
		waitExec(t, w, "sleep", 5*time.Second)
		want += statusLine(gen, w)
		waitStatus(t, status, want, 3*time.Second)
	}
	b.signal(syscall.SIGTERM)
	if code := b.wait(5 * time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if fileExists(status) {
		t.Errorf("status file left behind")
	}
}

func TestPidFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	sock := filepath.Join(dir, "s.sock")
	p := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--port=" + addr, "--path=" + sock, "--pid-file=" + pidFile}, goWorker())...)
	w := waitServing(t, addr, 1, 5*time.Second)

	data, err := os.ReadFile(pidFile)
	if err != nil || string(data) != fmt.Sprintf("%d\n", b.pid) {
		t.Fatalf("pid file %q (err %v), want %q", data, err, fmt.Sprintf("%d\n", b.pid))
	}
	f, err := os.Open(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	f.Close()
	if !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Errorf("flock(LOCK_EX|LOCK_NB) on the pid file of a running bridge: %v, want EWOULDBLOCK", err)
	}

	res := runBridgeCmd(t, 10*time.Second, nil, "--stop", "--pid-file="+pidFile)
	if res.code != 0 {
		t.Errorf("--stop exited %d; stderr %q", res.code, res.stderr)
	}
	// --stop returns only once the server has exited
	if st, ok := proc.ReadStat(b.pid); ok && st.State != 'Z' {
		t.Errorf("--stop returned while the bridge %d is still running (state %c)", b.pid, st.State)
	}
	if proc.Alive(w) {
		t.Errorf("--stop returned while worker %d is still running", w)
	}
	if fileExists(sock) {
		t.Errorf("--stop returned before the socket file was removed")
	}
	if fileExists(pidFile) {
		t.Errorf("--stop returned before the pid file was removed")
	}
	wantLine := fmt.Sprintf("stop_server (pid:%d) stopping now (pid:%d)...", res.pid, b.pid)
	if !strings.Contains(res.stdout+res.stderr, wantLine+"\n") {
		t.Errorf("--stop output %q, want the line %q", res.stdout+res.stderr, wantLine)
	}
	if code := b.wait(5 * time.Second); code != 0 {
		t.Errorf("bridge exit code %d, want 0", code)
	}
	b.expectSequence(`^received TERM, sending TERM to all workers:`+strconv.Itoa(w)+`$`, `^exiting$`)
}

// A pid file left by a bridge killed with SIGKILL: --stop fails, a new start succeeds.
func TestStalePidFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "pid")
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--pid-file=" + pidFile}, []string{"sleep", "1000"})...)
	b.worker(1, 5*time.Second)
	waitFileContains(t, pidFile, 5*time.Second, fmt.Sprintf("%d\n", b.pid))
	b.signal(syscall.SIGKILL)
	b.wait(5 * time.Second)
	syscall.Kill(-b.pid, syscall.SIGKILL) // its worker
	if !fileExists(pidFile) {
		t.Fatal("the pid file should survive SIGKILL")
	}

	res := runBridgeCmd(t, 10*time.Second, nil, "--stop", "--pid-file="+pidFile)
	if res.code == 0 || res.timedOut {
		t.Errorf("--stop with a stale pid file: exit %d (timed out %v), want non-zero", res.code, res.timedOut)
	}
	if lines := strings.Split(strings.TrimSuffix(res.stderr, "\n"), "\n"); len(lines) != 1 || lines[0] == "" {
		t.Errorf("--stop with a stale pid file: stderr %q, want one line", res.stderr)
	}
	if res.took > 3*time.Second {
		t.Errorf("--stop with a stale pid file took %v", res.took)
	}

	b2 := startBridge(t, cmdArgs([]string{"--interval=0", "--pid-file=" + pidFile}, []string{"sleep", "1000"})...)
	b2.worker(1, 5*time.Second)
	waitFileContains(t, pidFile, 5*time.Second, fmt.Sprintf("%d\n", b2.pid))
	if data, _ := os.ReadFile(pidFile); string(data) != fmt.Sprintf("%d\n", b2.pid) {
		t.Errorf("pid file %q, want %q", data, fmt.Sprintf("%d\n", b2.pid))
	}
}

func TestRestartCommand(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile, status := filepath.Join(dir, "pid"), filepath.Join(dir, "status")
	p := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--port=" + addr, "--pid-file=" + pidFile, "--status-file=" + status}, goWorker())...)
	waitServing(t, addr, 1, 5*time.Second)
	w1 := b.worker(1, time.Second)
	waitStatus(t, status, statusLine(1, w1), 3*time.Second)

	res := runBridgeCmd(t, 15*time.Second, nil, "--restart", "--pid-file="+pidFile, "--status-file="+status)
	data, _ := os.ReadFile(status)
	if res.code != 0 {
		t.Fatalf("--restart exited %d; stderr %q", res.code, res.stderr)
	}
	w2 := b.worker(2, time.Second)
	if string(data) != statusLine(2, w2) {
		t.Errorf("when --restart returned the status file was %q, want %q", data, statusLine(2, w2))
	}
	if proc.Alive(w1) {
		t.Errorf("--restart returned while the old worker %d is alive", w1)
	}
	if pid, gen, err := getPidGen(addr); err != nil || gen != 2 || pid != w2 {
		t.Errorf("after --restart: pid %d gen %d err %v, want pid %d gen 2", pid, gen, err, w2)
	}
}

// --restart --timeout=1 gives up when the new generation never comes up.
func TestRestartTimeout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pidFile, status, flag := filepath.Join(dir, "pid"), filepath.Join(dir, "status"), filepath.Join(dir, "fail")
	p := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	startBridge(t, cmdArgs([]string{"--interval=0.3", "--max-backoff=0.5", "--port=" + addr, "--pid-file=" + pidFile, "--status-file=" + status},
		[]string{"sh", "-c", `if [ -e '` + flag + `' ]; then exit 3; fi; exec ` + e2eWorkerBin})...)
	w1 := waitServing(t, addr, 1, 5*time.Second)
	waitStatus(t, status, statusLine(1, w1), 3*time.Second)
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	res := runBridgeCmd(t, 10*time.Second, nil, "--restart", "--timeout=1", "--pid-file="+pidFile, "--status-file="+status)
	if res.timedOut || res.code == 0 {
		t.Errorf("--restart --timeout=1 with a failing new generation: exit %d (timed out %v), want non-zero", res.code, res.timedOut)
	}
	if res.took < 900*time.Millisecond || res.took > 3*time.Second {
		t.Errorf("--restart --timeout=1 took %v, want about 1s", res.took)
	}
	if strings.TrimSpace(res.stderr) == "" {
		t.Errorf("--restart --timeout=1 failed without a message")
	}
	t.Logf("--restart --timeout=1: exit %d after %v, stderr %q", res.code, res.took, res.stderr)
	if pid, gen, err := getPidGen(addr); err != nil || pid != w1 || gen != 1 {
		t.Errorf("old generation no longer serves: pid %d gen %d err %v", pid, gen, err)
	}
}

func TestEnvdir(t *testing.T) {
	t.Parallel()
	for _, viaEnv := range []bool{false, true} {
		name := "option"
		if viaEnv {
			name = "ENVDIR"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			envdir := filepath.Join(dir, "envdir")
			os.Mkdir(envdir, 0o755)
			if err := os.WriteFile(filepath.Join(envdir, "FOO"), []byte("bar\nsecond\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg := bridgeConfig{}
			opts := []string{"--interval=0"}
			if viaEnv {
				cfg.env = []string{"ENVDIR=" + envdir}
			} else {
				opts = append(opts, "--envdir="+envdir)
			}
			b := startBridgeWith(t, cfg, cmdArgs(opts, envDumpWorker(dir))...)
			env := readEnvDump(t, dir, 1, 5*time.Second)
			if v, ok := env["FOO"]; !ok || v != "bar" {
				t.Errorf("generation 1: FOO=%q (set %v), want \"bar\"", v, ok)
			}
			if err := os.Remove(filepath.Join(envdir, "FOO")); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(envdir, "BAZ"), []byte("qux"), 0o644); err != nil {
				t.Fatal(err)
			}
			b.signal(syscall.SIGHUP)
			env = readEnvDump(t, dir, 2, 5*time.Second)
			if v, ok := env["FOO"]; ok {
				t.Errorf("generation 2: FOO=%q, want it unset after its envdir file was removed", v)
			}
			if v := env["BAZ"]; v != "qux" {
				t.Errorf("generation 2: BAZ=%q, want \"qux\" (file without a newline)", v)
			}
		})
	}
	t.Run("KILL_OLD_DELAY", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		envdir := filepath.Join(dir, "envdir")
		os.Mkdir(envdir, 0o755)
		b := startBridge(t, cmdArgs([]string{"--interval=0", "--envdir=" + envdir}, []string{"sleep", "1000"})...)
		w1 := b.worker(1, 5*time.Second)
		// written after the start: the envdir is read again whenever the bridge wakes
		if err := os.WriteFile(filepath.Join(envdir, "KILL_OLD_DELAY"), []byte("1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		b.signal(syscall.SIGHUP)
		m := b.expectSequenceWait(5*time.Second,
			`^starting new worker \d+$`, // gen 1
			`^starting new worker \d+$`,
			`^sleeping 1 secs before killing old workers$`,
			`^killing old workers$`,
			fmt.Sprintf(`^old worker %d died, status:15$`, w1))
		if d := m[3].at.Sub(m[1].at); d < 900*time.Millisecond || d > 2*time.Second {
			t.Errorf("old workers killed %v after the new one started, want about 1s", d)
		}
	})
}

// expectSequenceWait waits for a sequence of lines (see expectSequence).
func (b *bridge) expectSequenceWait(timeout time.Duration, patterns ...string) []match {
	b.t.Helper()
	b.waitLine(timeout, patterns[len(patterns)-1], 1)
	return b.expectSequence(patterns...)
}

func TestAutoRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	status := filepath.Join(dir, "status")
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--enable-auto-restart", "--auto-restart-interval=1", "--kill-old-delay=0", "--status-file=" + status},
		[]string{"sleep", "1000"})...)
	w1 := b.worker(1, 5*time.Second)
	start := time.Now()
	b.waitLine(3*time.Second, `^autorestart triggered \(interval=1\)$`, 1)
	w2 := b.worker(2, 3*time.Second)
	waitStatus(t, status, statusLine(2, w2), 3*time.Second)
	if d := time.Since(start); d > 3500*time.Millisecond {
		t.Errorf("auto-restart took %v", d)
	}
	b.expectSequence(`^autorestart triggered \(interval=1\)$`, `^starting new worker \d+$`,
		fmt.Sprintf(`^new worker is now running, sending TERM to old workers:%d$`, w1), `^killing old workers$`)
}

func TestKillOldDelay(t *testing.T) {
	t.Parallel()
	p := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--kill-old-delay=1", "--port=" + addr}, goWorker())...)
	w1 := waitServing(t, addr, 1, 5*time.Second)
	b.signal(syscall.SIGHUP)
	m := b.expectSequenceWait(5*time.Second,
		`^received HUP, spawning a new worker$`,
		`^starting new worker (\d+)$`,
		fmt.Sprintf(`^new worker is now running, sending TERM to old workers:%d$`, w1),
		`^sleeping 1 secs before killing old workers$`,
		`^killing old workers$`,
		fmt.Sprintf(`^worker %d got TERM$`, w1),
		fmt.Sprintf(`^old worker %d died, status:0$`, w1))
	if d := m[5].at.Sub(m[1].at); d < 900*time.Millisecond || d > 2*time.Second {
		t.Errorf("old worker signalled %v after the new one started, want about 1s", d)
	}
	// the old worker serves during the delay, the new one after it
	waitServing(t, addr, 2, 3*time.Second)
}

func TestLogFile(t *testing.T) {
	t.Parallel()
	t.Run("file", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		logFile := filepath.Join(dir, "log")
		os.WriteFile(logFile, []byte("previous line\n"), 0o644)
		p := freePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", p)
		b := startBridge(t, cmdArgs([]string{"--interval=0", "--port=" + addr, "--log-file=" + logFile}, goWorker())...)
		w := waitServing(t, addr, 1, 5*time.Second)
		waitFileContains(t, logFile, 3*time.Second, fmt.Sprintf("starting new worker %d\n", w), fmt.Sprintf("worker %d gen 1 serving\n", w))
		b.signal(syscall.SIGTERM)
		if code := b.wait(5 * time.Second); code != 0 {
			t.Errorf("exit code %d", code)
		}
		content := waitFileContains(t, logFile, 3*time.Second, fmt.Sprintf("worker %d died, status:0\n", w), "exiting\n")
		if !strings.HasPrefix(content, "previous line\n") {
			t.Errorf("log file not appended to: %q", content)
		}
		if strings.Contains(b.log.String(), "starting new worker") {
			t.Errorf("the bridge's stderr got log lines although --log-file was given: %q", b.log.String())
		}
	})
	t.Run("pipe", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		logFile := filepath.Join(dir, "log")
		p := freePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", p)
		b := startBridge(t, cmdArgs([]string{"--interval=0", "--port=" + addr, "--log-file=| cat >> '" + logFile + "'"}, goWorker())...)
		w := waitServing(t, addr, 1, 5*time.Second)
		waitFileContains(t, logFile, 3*time.Second, fmt.Sprintf("starting new worker %d\n", w), fmt.Sprintf("worker %d gen 1 serving\n", w))
		b.signal(syscall.SIGTERM)
		if code := b.wait(5 * time.Second); code != 0 {
			t.Errorf("exit code %d", code)
		}
		waitFileContains(t, logFile, 3*time.Second, fmt.Sprintf("worker %d died, status:0\n", w), "exiting\n")
	})
}

func TestDaemonize(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	logFile, pidFile, sock := filepath.Join(dir, "log"), filepath.Join(dir, "pid"), filepath.Join(dir, "s.sock")
	p := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	var daemon int
	t.Cleanup(func() {
		if daemon > 0 {
			workers := descendants(daemon)
			if proc.Alive(daemon) {
				syscall.Kill(daemon, syscall.SIGTERM)
				if !proc.WaitDead(daemon, 5*time.Second) {
					syscall.Kill(daemon, syscall.SIGKILL)
				}
			}
			for _, w := range workers {
				killIfOurs(w)
			}
		}
		if t.Failed() {
			data, _ := os.ReadFile(logFile)
			t.Logf("log file:\n%s", data)
		}
	})
	res := runBridgeCmd(t, 10*time.Second, nil, cmdArgs([]string{"--daemonize", "--interval=0", "--log-file=" + logFile, "--pid-file=" + pidFile,
		"--port=" + addr, "--path=" + sock}, goWorker())...)
	data, err := os.ReadFile(pidFile)
	if err == nil {
		daemon, _ = strconv.Atoi(strings.TrimSpace(string(data)))
	}
	if res.code != 0 || res.timedOut {
		t.Fatalf("--daemonize: exit %d (timed out %v), stderr %q", res.code, res.timedOut, res.stderr)
	}
	if err != nil || daemon <= 0 || string(data) != fmt.Sprintf("%d\n", daemon) {
		t.Fatalf("pid file right after --daemonize returned: %q (err %v)", data, err)
	}
	if daemon == res.pid {
		t.Errorf("the pid file holds the parent's pid %d, not the daemon's", daemon)
	}
	st, ok := proc.ReadStat(daemon)
	if !ok || st.State == 'Z' {
		t.Fatalf("daemon %d is not running", daemon)
	}
	if st.Session == daemon {
		t.Errorf("daemon %d is a session leader (sid %d); want the child of one", daemon, st.Session)
	}
	if st.Session == mySid() {
		t.Errorf("daemon %d is in the test's session %d", daemon, st.Session)
	}
	w := waitServing(t, addr, 1, 5*time.Second)
	if pid, gen, err := getPidGenUnix(sock); err != nil || pid != w || gen != 1 {
		t.Errorf("unix socket: pid %d gen %d err %v", pid, gen, err)
	}
	waitFileContains(t, logFile, 3*time.Second, fmt.Sprintf("starting new worker %d\n", w))
	if !fileExists(sock) {
		t.Errorf("socket file removed by an exiting parent")
	}

	res = runBridgeCmd(t, 10*time.Second, nil, "--stop", "--pid-file="+pidFile)
	if res.code != 0 {
		t.Errorf("--stop: exit %d, stderr %q", res.code, res.stderr)
	}
	if proc.Alive(daemon) {
		t.Errorf("--stop returned while the daemon is alive")
	}
	if proc.Alive(w) {
		t.Errorf("--stop returned while the worker is alive")
	}
	if fileExists(sock) {
		t.Errorf("socket file left after the daemon exited")
	}
	if fileExists(pidFile) {
		t.Errorf("pid file left after the daemon exited")
	}
	waitFileContains(t, logFile, 3*time.Second, "exiting\n")
}

func TestPath(t *testing.T) {
	t.Parallel()
	t.Run("stale-socket", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		sock := filepath.Join(dir, "s.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()
		if !fileExists(sock) {
			t.Fatal("could not leave a stale socket file")
		}
		b := startBridge(t, cmdArgs([]string{"--interval=0", "--path=" + sock}, goWorker())...)
		b.waitLine(5*time.Second, `^removing existing socket file:`+regexpQuote(sock), 1)
		w := b.worker(1, 5*time.Second)
		deadline := time.Now().Add(5 * time.Second)
		for {
			pid, gen, err := getPidGenUnix(sock)
			if err == nil && pid == w && gen == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET over %s: pid %d gen %d err %v", sock, pid, gen, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
		b.signal(syscall.SIGTERM)
		b.wait(5 * time.Second)
		if fileExists(sock) {
			t.Errorf("socket file %s left after exit", sock)
		}
	})
	for _, tc := range []struct {
		name string
		opts []string
		mode os.FileMode
	}{
		{"default-mode", nil, 0o777},
		{"path-mode-0660", []string{"--path-mode=0660"}, 0o660},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			sock := filepath.Join(dir, "s.sock")
			b := startBridge(t, cmdArgs(append([]string{"--interval=0", "--path=" + sock}, tc.opts...), []string{"sleep", "1000"})...)
			b.worker(1, 5*time.Second)
			fi, err := os.Lstat(sock)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != tc.mode {
				t.Errorf("socket file mode %v, want socket with %v", fi.Mode(), tc.mode)
			}
			b.signal(syscall.SIGTERM)
			b.wait(5 * time.Second)
			if fileExists(sock) {
				t.Errorf("socket file %s left after exit", sock)
			}
		})
	}
}

func regexpQuote(s string) string {
	var sb strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`\.+*?()|[]{}^$`, r) {
			sb.WriteByte('\\')
		}
		sb.WriteRune(r)
	}
	return sb.String()
}

func TestDir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	wd, _ := filepath.EvalSymlinks(dir)
	if err := os.WriteFile(filepath.Join(dir, "w"), []byte("#!/bin/sh\nexec sleep 1000\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--dir=" + dir}, []string{"./w"})...)
	w := b.worker(1, 5*time.Second)
	waitExec(t, w, "sleep", 5*time.Second)
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", w))
	if err != nil || cwd != wd {
		t.Errorf("worker cwd %q (err %v), want %q", cwd, err, wd)
	}
	time.Sleep(200 * time.Millisecond)
	if n := b.count(`^starting new worker `); n != 1 {
		t.Errorf("%d workers started, want 1 (relative command not found in --dir?)", n)
	}
}
