package main

// Bad input (issue 8, items 6, 7, 9, 10): durations, --path, the envdir, =FD pins, numeric
// signals.

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// badInputResult runs the bridge with args (and env) to completion and checks what every
// bad input gives: exit status 1, exactly one line on stderr, which is want, and nothing
// started or left behind (dir holds the socket, pid file and worker marker of the run).
func checkBadInput(t *testing.T, res runResult, dir, want string) {
	t.Helper()
	time.Sleep(100 * time.Millisecond)
	leftovers := append(procsInGroup(res.pid), procsWithCmdline(dir)...)
	for _, p := range leftovers {
		syscall.Kill(p, syscall.SIGKILL)
	}
	if res.timedOut {
		t.Fatalf("still running after the timeout (killed); stderr %q", res.stderr)
	}
	if res.code != 1 {
		t.Errorf("exit status %d, want 1", res.code)
	}
	if res.stderr != want+"\n" || res.stdout != "" {
		t.Errorf("stderr %q, stdout %q; want stderr %q", res.stderr, res.stdout, want+"\n")
	}
	if len(leftovers) > 0 {
		t.Errorf("processes left behind: %v", leftovers)
	}
	for _, name := range []string{"marker", "s.sock", "pid"} {
		if fileExists(filepath.Join(dir, name)) {
			t.Errorf("%s left behind (or a worker was started)", name)
		}
	}
}

// markerWorker touches dir/marker: a worker that must never start.
func markerWorker(dir string) []string {
	return []string{"sh", "-c", "touch '" + filepath.Join(dir, "marker") + "'; exec sleep 100"}
}

// Every duration is checked alike: NaN, infinities, negative numbers and values that
// overflow a duration are one line and exit 1, before anything is bound.
func TestBadDurations(t *testing.T) {
	t.Parallel()
	cases := []struct {
		arg, env, want string
	}{
		{"--interval=nan", "", "--interval=nan: not a number of seconds"},
		{"--kill-timeout=nan", "", "--kill-timeout=nan: not a number of seconds"},
		{"--auto-restart-interval=1e10", "", "--auto-restart-interval=1e10: more than the limit of 1000000000 seconds"},
		{"--kill-old-delay=1e10", "", "--kill-old-delay=1e10: more than the limit of 1000000000 seconds"},
		{"--kill-old-delay=nan", "", "--kill-old-delay=nan: not a number of seconds"},
		{"--worker-watchdog=1e-7", "", "--worker-watchdog=1e-7: below 1 microsecond, the unit of WATCHDOG_USEC"},
		{"--max-backoff=inf", "", "--max-backoff=inf: not a finite number of seconds"},
		{"--ready-timeout=-1", "", "--ready-timeout=-1: a negative number of seconds"},
		{"--interval=1e400", "", "--interval=1e400: not a finite number of seconds"},
		{"", "KILL_OLD_DELAY=nan", "KILL_OLD_DELAY=nan: not a number of seconds"},
		{"", "AUTO_RESTART_INTERVAL=-Inf", "AUTO_RESTART_INTERVAL=-Inf: not a finite number of seconds"},
	}
	for _, tc := range cases {
		name := tc.arg + tc.env
		t.Run(strings.ReplaceAll(strings.TrimLeft(name, "-"), "=", "-"), func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			opts := []string{"--path=" + filepath.Join(dir, "s.sock"), "--pid-file=" + filepath.Join(dir, "pid")}
			if tc.arg != "" {
				opts = append(opts, tc.arg)
			}
			var env []string
			if tc.env != "" {
				env = append(env, tc.env)
			}
			res := runBridgeCmd(t, 10*time.Second, env, cmdArgs(opts, markerWorker(dir))...)
			checkBadInput(t, res, dir, "ss-bridge: "+strings.TrimSuffix(tc.want, "\n")+suffixFor(tc.arg))
		})
	}
}

// suffixFor is what the bridge adds to an option's error.
func suffixFor(arg string) string {
	if arg != "" {
		return " (see --help)"
	}
	return ""
}

// envdirBridge starts the bridge with an envdir prepared by fill and an env-dumping
// worker; it returns the bridge and the directory of the dumps.
func envdirBridge(t *testing.T, fill func(envdir string)) (*bridge, string) {
	dir := t.TempDir()
	envdir := filepath.Join(dir, "envdir")
	os.Mkdir(envdir, 0o755)
	os.WriteFile(filepath.Join(envdir, "GOOD"), []byte("yes\n"), 0o644)
	fill(envdir)
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--envdir=" + envdir}, envDumpWorker(dir))...)
	return b, dir
}

// A FIFO in the envdir is not read (it would block the loop until a writer came), and
// TERM is acted on at once.
func TestEnvdirFIFO(t *testing.T) {
	t.Parallel()
	var fifo string
	b, dir := envdirBridge(t, func(envdir string) {
		fifo = filepath.Join(envdir, "FIFO")
		if err := syscall.Mkfifo(fifo, 0o644); err != nil {
			t.Fatal(err)
		}
	})
	if env := readEnvDump(t, dir, 1, 5*time.Second); env["GOOD"] != "yes" {
		t.Errorf("GOOD=%q, want \"yes\"", env["GOOD"])
	}
	b.waitLine(time.Second, "^envdir: ignoring "+fifo+": not a regular file$", 1)
	b.signal(syscall.SIGHUP)
	readEnvDump(t, dir, 2, 5*time.Second)
	sent := time.Now()
	b.signal(syscall.SIGTERM)
	if code := b.wait(5 * time.Second); code != 0 {
		t.Errorf("exit status %d after TERM, want 0", code)
	}
	if d := time.Since(sent); d > 2*time.Second {
		t.Errorf("the bridge took %v to exit after TERM", d)
	}
}

// vmHWM is the peak resident memory of pid, in kB.
func vmHWM(t *testing.T, pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			return kb
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// A huge envdir file without a newline costs the bridge a bounded amount of memory (it
// cost twice the file's size), and is named as skipped.
func TestEnvdirHugeFile(t *testing.T) {
	t.Parallel()
	const size = 64 << 20
	var huge string
	b, dir := envdirBridge(t, func(envdir string) {
		huge = filepath.Join(envdir, "HUGE")
		if err := os.WriteFile(huge, bytes.Repeat([]byte("a"), size), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	env := readEnvDump(t, dir, 1, 10*time.Second)
	b.signal(syscall.SIGHUP)
	readEnvDump(t, dir, 2, 10*time.Second)
	if v, ok := env["HUGE"]; ok {
		t.Errorf("HUGE is set (%d bytes), want it skipped", len(v))
	}
	b.waitLine(time.Second, "^envdir: ignoring "+huge+": first line longer than 131072 bytes$", 2)
	// The peak, not the current size: a collection may have freed the buffer since.
	if kb := vmHWM(t, b.pid); kb > 32<<10 {
		t.Errorf("the bridge's peak resident memory is %d kB with a %d MB envdir file, want under 32 MB", kb, size>>20)
	} else {
		t.Logf("peak resident memory %d kB with a %d MB envdir file", kb, size>>20)
	}
}

// A NUL byte in an envdir file (which exec refuses) skips that file, naming it; the
// worker starts with the other variables.
func TestEnvdirNULNamesTheFile(t *testing.T) {
	t.Parallel()
	var nul string
	b, dir := envdirBridge(t, func(envdir string) {
		nul = filepath.Join(envdir, "NUL")
		os.WriteFile(nul, []byte("a\x00b\n"), 0o644)
	})
	env := readEnvDump(t, dir, 1, 5*time.Second)
	if _, ok := env["NUL"]; ok || env["GOOD"] != "yes" {
		t.Errorf("NUL set %v, GOOD=%q; want NUL unset and GOOD=yes", ok, env["GOOD"])
	}
	b.waitLine(time.Second, "^envdir: ignoring "+nul+": contains a NUL byte$", 1)
}

// A bad KILL_OLD_DELAY in the envdir at run time does not stop the server: it is named in
// one line and the option's value is used.
func TestEnvdirBadKillOldDelay(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	envdir := filepath.Join(dir, "envdir")
	os.Mkdir(envdir, 0o755)
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--kill-old-delay=0.5", "--envdir=" + envdir}, []string{"sleep", "1000"})...)
	w1 := b.worker(1, 5*time.Second)
	file := filepath.Join(envdir, "KILL_OLD_DELAY")
	os.WriteFile(file, []byte("1e10\n"), 0o644)
	b.signal(syscall.SIGHUP)
	b.expectSequenceWait(5*time.Second,
		`^envdir: ignoring `+file+`: "1e10": more than the limit of 1000000000 seconds; using 0.5$`,
		`^starting new worker \d+$`,
		`^sleeping 0.5 secs before killing old workers$`,
		`^killing old workers$`,
		fmt.Sprintf(`^old worker %d died, status:15$`, w1))
}

// A second instance with the same --path leaves the first's live socket alone and fails;
// the first keeps serving on it.
func TestPathInUse(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	startBridge(t, cmdArgs([]string{"--interval=0", "--path=" + sock}, goWorker())...)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, gen, err := getPidGenUnix(sock); err == nil && gen == 1 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("first instance does not serve on %s: %v", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	dir2 := t.TempDir()
	res := runBridgeCmd(t, 10*time.Second, nil, cmdArgs([]string{"--interval=0", "--path=" + sock, "--pid-file=" + filepath.Join(dir2, "pid")}, markerWorker(dir2))...)
	checkBadInput(t, res, dir2, fmt.Sprintf("ss-bridge: listen on %s: %s is in use: another process listens on it", sock, sock))
	if _, gen, err := getPidGenUnix(sock); err != nil || gen != 1 {
		t.Errorf("the first instance's socket no longer works: gen %d, %v", gen, err)
	}
}

// The same --path twice, in any spelling, is an error: the second bind would replace the
// first's socket file and orphan its socket.
func TestPathTwice(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	res := runBridgeCmd(t, 10*time.Second, nil, cmdArgs([]string{"--path=" + sock, "--path=" + dir + "/./s.sock", "--pid-file=" + filepath.Join(dir, "pid")}, markerWorker(dir))...)
	checkBadInput(t, res, dir, "ss-bridge: --path "+dir+"/./s.sock is given twice")
}

// A socket file nobody listens on is stale: it is removed with a warning and replaced.
func TestStalePathRemoved(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sock := filepath.Join(dir, "app.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if !fileExists(sock) {
		t.Fatal("no stale socket file")
	}
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--path=" + sock}, goWorker())...)
	b.waitLine(5*time.Second, "^removing existing socket file:"+sock+"$", 1)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, gen, err := getPidGenUnix(sock); err == nil && gen == 1 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("no worker serves on %s: %v", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An =FD pin that the workers could not get under the fd limit is one line before
// anything is bound (it was bound, then every start failed with "bad file descriptor").
func TestPinBeyondFDLimit(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	opts := []string{"--interval=0", "--port=127.0.0.1:0=100", "--pid-file=" + filepath.Join(dir, "pid")}
	// sh lowers the limit (soft and hard: Go raises its soft limit to the hard one).
	args := append([]string{"-c", `ulimit -n 64 && exec "$0" "$@"`, e2eBridgeBin}, cmdArgs(opts, markerWorker(dir))...)
	var stdout, stderr logBuf
	cmd := exec.Command("sh", args...)
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	copied, err := startWithPipes(cmd, &stdout, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	res := runResult{pid: cmd.Process.Pid}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		res.timedOut = true
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	select {
	case <-copied:
	case <-time.After(500 * time.Millisecond):
	}
	res.stdout, res.stderr, res.code = stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
	checkBadInput(t, res, dir, "ss-bridge: --port 127.0.0.1:0=100: descriptor 100 needs a limit of open files of at least 104 (RLIMIT_NOFILE is 64)")
}

// --signal-on-hup=9: a number, which Perl's kill accepts, works, and is logged as given,
// as 0.35 logs it.
func TestSignalOnHUPNumber(t *testing.T) {
	t.Parallel()
	bins := map[string]string{"ss-bridge": e2eBridgeBin}
	if perl, err := exec.LookPath("start_server"); err == nil && os.Getenv("SS_BRIDGE_TEST_BIN") == "" {
		bins["perl"] = perl
	}
	for name, bin := range bins {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := startBridgeWith(t, bridgeConfig{bin: bin},
				cmdArgs([]string{"--interval=0", "--signal-on-hup=9", fmt.Sprintf("--port=127.0.0.1:%d", freePort(t))}, []string{"sleep", "1000"})...)
			w1 := b.worker(1, 5*time.Second)
			b.signal(syscall.SIGHUP)
			b.expectSequenceWait(5*time.Second,
				`^starting new worker \d+$`,
				fmt.Sprintf(`^new worker is now running, sending 9 to old workers:%d$`, w1),
				`^killing old workers$`,
				fmt.Sprintf(`^old worker %d died, status:9$`, w1))
		})
	}
}
