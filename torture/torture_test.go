// Package torture runs the ss-bridge binary through what goes wrong in
// production: workers that crash at once forever, ignore SIGTERM or leave
// children behind; the bridge killed with SIGKILL; descriptor exhaustion; a
// full disk under the status file; a storm of HUPs. TestMain builds the bridge
// and internal/testworker; set SS_BRIDGE_TEST_RACE=1 to build the bridge with
// -race.
package torture

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/proc"
	"github.com/ss-bridge/ss-bridge/internal/testkit"
	"golang.org/x/sys/unix"
)

var bridgeBin, workerBin string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	// Descriptors inherited from the shell that ran go test must not reach
	// the bridges, whose descriptor counts are checked.
	testkit.CloseOnExecInherited()
	bins, err := testkit.Build("torture", "..", "")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(bins.Dir)
	bridgeBin, workerBin = bins.Bridge, bins.Worker
	return m.Run()
}

// ---------------------------------------------------------------------------
// The bridge process

type logBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

type bridge struct {
	t    *testing.T
	cmd  *exec.Cmd
	pid  int
	log  *logBuf
	done chan struct{}
}

// startBridge runs the bridge in a process group of its own, with its output
// (and its workers') collected; the cleanup kills the group.
func startBridge(t *testing.T, args ...string) *bridge {
	t.Helper()
	b := &bridge{t: t, log: &logBuf{}, done: make(chan struct{})}
	b.cmd = exec.Command(bridgeBin, args...)
	b.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=")
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	b.cmd.Stdout, b.cmd.Stderr = w, w
	if err := b.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	go func() { io.Copy(b.log, r); r.Close() }()
	b.pid = b.cmd.Process.Pid
	go func() { b.cmd.Wait(); close(b.done) }()
	t.Cleanup(func() {
		if !b.exited() {
			syscall.Kill(b.pid, syscall.SIGTERM)
			select {
			case <-b.done:
			case <-time.After(5 * time.Second):
				t.Errorf("bridge %d did not exit within 5s of TERM", b.pid)
			}
		}
		syscall.Kill(-b.pid, syscall.SIGKILL)
		syscall.Kill(b.pid, syscall.SIGKILL)
		<-b.done
		if strings.Contains(b.log.String(), "WARNING: DATA RACE") {
			t.Errorf("the bridge reported a data race")
		}
		if t.Failed() {
			t.Logf("bridge %q output:\n%s", args, b.log.String())
		}
	})
	return b
}

func (b *bridge) exited() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

var re = testkit.Regexp

// matches returns the submatches of every output line matching pattern.
func (b *bridge) matches(pattern string) [][]string {
	var out [][]string
	for _, line := range strings.Split(b.log.String(), "\n") {
		if m := re(pattern).FindStringSubmatch(line); m != nil {
			out = append(out, m)
		}
	}
	return out
}

func (b *bridge) count(pattern string) int { return len(b.matches(pattern)) }

// waitLine waits for the nth (1-based) line matching pattern and returns its
// submatches.
func (b *bridge) waitLine(timeout time.Duration, pattern string, nth int) []string {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if ms := b.matches(pattern); len(ms) >= nth {
			return ms[nth-1]
		}
		if time.Now().After(deadline) || b.exited() {
			time.Sleep(50 * time.Millisecond) // the last output
			if ms := b.matches(pattern); len(ms) >= nth {
				return ms[nth-1]
			}
			b.t.Fatalf("no output line #%d matching %q within %v (bridge exited: %v)", nth, pattern, timeout, b.exited())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// workerPID waits for the nth "starting new worker N" line and returns N.
func (b *bridge) workerPID(nth int) int {
	b.t.Helper()
	pid, _ := strconv.Atoi(b.waitLine(10*time.Second, `^starting new worker (\d+)$`, nth)[1])
	return pid
}

// ---------------------------------------------------------------------------
// Network and processes

var (
	freePort = testkit.FreePort
	getFrom  = testkit.Ask
)

// get does one GET on a new connection to 127.0.0.1:port.
func get(port int) (pid, gen int, err error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 3 * time.Second}
	return getFrom(c, fmt.Sprintf("http://127.0.0.1:%d/", port))
}

// getUnix does one GET over the unix socket at path.
func getUnix(path string) (pid, gen int, err error) {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		Dial: func(string, string) (net.Conn, error) { return net.Dial("unix", path) }}}
	return getFrom(c, "http://unix/")
}

// waitServing waits until generation gen (or a later one) answers on port.
func waitServing(t *testing.T, port, gen int, timeout time.Duration) (pid, got int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for time.Now().Before(deadline) {
		var g int
		if pid, g, err = get(port); err == nil && g >= gen {
			return pid, g
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no worker of generation %d or later answered on port %d within %v (last error %v)", gen, port, timeout, err)
	return 0, 0
}

// cpuTicks is the CPU time (user + system, in clock ticks of 10 ms) pid has
// used.
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	st, ok := proc.ReadStat(pid)
	if !ok {
		t.Fatalf("process %d is gone", pid)
	}
	return st.Ticks
}

// children returns the pids whose parent is pid, and how many of them are
// zombies.
func children(pid int) (pids []int, zombies int) {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, ok := proc.ReadStat(n); ok && st.PPID == pid {
			pids = append(pids, n)
			if st.State == 'Z' {
				zombies++
			}
		}
	}
	return pids, zombies
}

func readStatus(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("status file: %v", err)
	}
	return string(data)
}

// ---------------------------------------------------------------------------
// Tests

// A worker that crashes at once, forever: the bridge backs off, so that it
// costs little CPU, whether no generation serves yet or an old one does (a
// HUP to a broken build), and the old generation keeps serving.
func TestCrashingWorker(t *testing.T) {
	t.Run("from the start", func(t *testing.T) {
		t.Parallel()
		b := startBridge(t, fmt.Sprintf("--port=127.0.0.1:%d", freePort(t)), "--interval=0", "--", "sh", "-c", "exit 3")
		// With --interval=0 the worker counts as started before it dies.
		b.waitLine(5*time.Second, `^worker \d+ died unexpectedly with status:768, restarting$`, 1)
		cpu0, t0 := cpuTicks(t, b.pid), time.Now()
		time.Sleep(3 * time.Second)
		cpu := time.Duration(cpuTicks(t, b.pid)-cpu0) * 10 * time.Millisecond
		starts := b.count(`^starting new worker`)
		t.Logf("%d starts; bridge CPU %v in %v", starts, cpu, time.Since(t0).Round(time.Millisecond))
		// Backoff from 100 ms, doubling: 0.1+0.2+0.4+0.8+1.6 s.
		if starts > 7 {
			t.Errorf("%d starts in 3s: no backoff", starts)
		}
		if cpu > 150*time.Millisecond {
			t.Errorf("bridge used %v of CPU in 3s while its worker crash-looped", cpu)
		}
		b.waitLine(time.Second, `failed starts in a row, next attempt in`, 1)
	})

	t.Run("HUP to a broken build", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		script := filepath.Join(dir, "worker.sh")
		good := "#!/bin/sh\nexec " + workerBin + "\n"
		if err := os.WriteFile(script, []byte(good), 0o755); err != nil {
			t.Fatal(err)
		}
		port := freePort(t)
		status := filepath.Join(dir, "status")
		b := startBridge(t, fmt.Sprintf("--port=127.0.0.1:%d", port), "--interval=0.2", "--status-file="+status, "--", script)
		oldPID, _ := waitServing(t, port, 1, 10*time.Second)
		// The new build crashes at once.
		if err := os.WriteFile(script+".new", []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(script+".new", script); err != nil {
			t.Fatal(err)
		}
		syscall.Kill(b.pid, syscall.SIGHUP)
		b.waitLine(5*time.Second, `seems to have failed to start`, 1)
		cpu0 := cpuTicks(t, b.pid)
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
			pid, gen, err := get(port)
			if err != nil || pid != oldPID || gen != 1 {
				t.Fatalf("while the new build crashes, got pid %d gen %d err %v; want the old generation (pid %d)", pid, gen, err, oldPID)
			}
		}
		cpu := time.Duration(cpuTicks(t, b.pid)-cpu0) * 10 * time.Millisecond
		starts := b.count(`^starting new worker`)
		t.Logf("%d starts; bridge CPU %v in 3s", starts, cpu)
		if starts > 8 {
			t.Errorf("%d starts: no backoff", starts)
		}
		if cpu > 150*time.Millisecond {
			t.Errorf("bridge used %v of CPU in 3s while the new build crash-looped", cpu)
		}
		if got, want := readStatus(t, status), fmt.Sprintf("1:%d\n", oldPID); got != want {
			t.Errorf("status file %q, want %q", got, want)
		}
		// A fixed build is picked up at the next HUP.
		if err := os.WriteFile(script+".new", []byte(good), 0o755); err != nil {
			t.Fatal(err)
		}
		os.Rename(script+".new", script)
		syscall.Kill(b.pid, syscall.SIGHUP)
		if pid, _ := waitServing(t, port, 2, 10*time.Second); pid == oldPID {
			t.Errorf("the old worker still answers")
		}
		if !proc.WaitDead(oldPID, 5*time.Second) {
			t.Errorf("old worker %d still runs", oldPID)
		}
	})
}

// A worker that ignores SIGTERM gets SIGKILL after --kill-timeout, after a
// HUP and after the bridge's own TERM.
func TestWorkerIgnoringTERM(t *testing.T) {
	port := freePort(t)
	b := startBridge(t, fmt.Sprintf("--port=127.0.0.1:%d", port), "--interval=0", "--kill-timeout=0.5", "--", workerBin, "-ignore-term")
	old := b.workerPID(1)
	waitServing(t, port, 1, 10*time.Second)
	hup := time.Now()
	syscall.Kill(b.pid, syscall.SIGHUP)
	b.waitLine(5*time.Second, fmt.Sprintf(`^worker %d did not exit within 0.5s of its signal, sending KILL$`, old), 1)
	b.waitLine(5*time.Second, fmt.Sprintf(`^old worker %d died, status:9$`, old), 1)
	if took := time.Since(hup); took < 500*time.Millisecond || took > 3*time.Second {
		t.Errorf("old worker killed %v after the HUP, want about 0.5s", took)
	}
	waitServing(t, port, 2, 5*time.Second)

	current := b.workerPID(2)
	term := time.Now()
	syscall.Kill(b.pid, syscall.SIGTERM)
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		t.Fatal("bridge did not exit within 5s of TERM")
	}
	if took := time.Since(term); took < 500*time.Millisecond || took > 3*time.Second {
		t.Errorf("bridge exited %v after TERM, want about 0.5s", took)
	}
	if proc.Alive(current) {
		t.Errorf("worker %d survived", current)
	}
	b.waitLine(time.Second, fmt.Sprintf(`^worker %d died, status:9$`, current), 1)
}

// A worker that forks children and exits: the bridge, the reaper of its
// orphans, reports each of them when it exits, and the generation counts as
// failed, not alive, though its children still run.
func TestWorkerLeavingChildren(t *testing.T) {
	status := filepath.Join(t.TempDir(), "status")
	port := freePort(t)
	b := startBridge(t, fmt.Sprintf("--port=127.0.0.1:%d", port), "--interval=0.5", "--max-backoff=10", "--status-file="+status,
		"--", "sh", "-c", "(sleep 0.4; exit 5) & (sleep 0.4) & exit 0")
	worker := b.workerPID(1)
	b.waitLine(5*time.Second, fmt.Sprintf(`^new worker %d seems to have failed to start, exit status:0$`, worker), 1)
	// The orphans are the bridge's children now.
	kids, _ := children(b.pid)
	adopted := 0
	for _, k := range kids {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", k))
		if proc.Alive(k) && (bytes.HasPrefix(cmdline, []byte("sh")) || bytes.HasPrefix(cmdline, []byte("sleep"))) {
			adopted++
		}
	}
	if adopted == 0 {
		t.Errorf("no orphan of worker %d was re-parented to the bridge (children: %v)", worker, kids)
	}
	m1 := b.waitLine(5*time.Second, `^process (\d+) \(not a worker\) exited, status:(\d+)$`, 1)
	m2 := b.waitLine(5*time.Second, `^process (\d+) \(not a worker\) exited, status:(\d+)$`, 2)
	if got := []string{m1[2], m2[2]}; !(got[0] == "1280" && got[1] == "0" || got[0] == "0" && got[1] == "1280") {
		t.Errorf("orphans exited with statuses %v, want 1280 (exit 5) and 0", got)
	}
	if data, err := os.ReadFile(status); err == nil && len(data) > 0 {
		t.Errorf("status file lists %q though no generation ever started", data)
	}
	if _, _, err := get(port); err == nil {
		t.Errorf("something answers on the port though no worker serves")
	}
	if _, zombies := children(b.pid); zombies > 0 {
		t.Errorf("%d zombies", zombies)
	}
}

// kill -9 of the bridge: its workers get its --signal-on-term (a parent-death
// signal), drain and exit, so that nothing serves unsupervised; a new bridge
// with the same pid file, unix socket and port starts at once.
func TestBridgeKilled(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	sock := filepath.Join(dir, "app.sock")
	args := []string{fmt.Sprintf("--port=127.0.0.1:%d", port), "--path=" + sock, "--interval=0",
		"--pid-file=" + filepath.Join(dir, "pid"), "--status-file=" + filepath.Join(dir, "status"), "--", workerBin}
	b := startBridge(t, args...)
	worker := b.workerPID(1)
	waitServing(t, port, 1, 10*time.Second)
	if _, _, err := getUnix(sock); err != nil {
		t.Fatalf("unix socket: %v", err)
	}
	syscall.Kill(b.pid, syscall.SIGKILL)
	<-b.done
	if !proc.WaitDead(worker, 5*time.Second) {
		t.Fatalf("worker %d still runs 5s after the bridge was killed", worker)
	}
	if !strings.Contains(b.log.String(), fmt.Sprintf("worker %d got TERM", worker)) {
		t.Errorf("worker did not log its TERM")
	}
	for _, f := range []string{"pid", "app.sock", "status"} {
		if _, err := os.Lstat(filepath.Join(dir, f)); err != nil {
			t.Logf("%s was not left behind: %v", f, err)
		}
	}

	b2 := startBridge(t, args...)
	b2.waitLine(5*time.Second, `^removing existing socket file:`+regexp.QuoteMeta(sock)+`$`, 1)
	pid, _ := waitServing(t, port, 1, 10*time.Second)
	if pid2, _, err := getUnix(sock); err != nil || pid2 != pid {
		t.Errorf("unix socket: pid %d err %v, want pid %d", pid2, err, pid)
	}
	data, _ := os.ReadFile(filepath.Join(dir, "pid"))
	if strings.TrimSpace(string(data)) != strconv.Itoa(b2.pid) {
		t.Errorf("pid file holds %q, want %d", data, b2.pid)
	}
}

// Descriptor exhaustion: with its limit lowered to the descriptors it holds,
// the bridge cannot start a new generation; it says so, retries with backoff
// and leaves the serving generation alone; once the limit is raised, the
// retry succeeds.
func TestDescriptorExhaustion(t *testing.T) {
	port := freePort(t)
	b := startBridge(t, fmt.Sprintf("--port=127.0.0.1:%d", port), "--interval=0", "--max-backoff=0.5", "--", workerBin)
	oldPID, _ := waitServing(t, port, 1, 10*time.Second)
	var orig unix.Rlimit
	if err := unix.Prlimit(b.pid, unix.RLIMIT_NOFILE, nil, &orig); err != nil {
		t.Fatal(err)
	}
	n := uint64(proc.FDCount(b.pid))
	if err := unix.Prlimit(b.pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: n, Max: orig.Max}, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	syscall.Kill(b.pid, syscall.SIGHUP)
	b.waitLine(5*time.Second, `too many open files`, 1)
	for end := time.Now().Add(time.Second); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if pid, gen, err := get(port); err != nil || pid != oldPID || gen != 1 {
			t.Fatalf("got pid %d gen %d err %v; want the serving generation (pid %d)", pid, gen, err, oldPID)
		}
	}
	if b.exited() {
		t.Fatal("the bridge exited")
	}
	if err := unix.Prlimit(b.pid, unix.RLIMIT_NOFILE, &orig, nil); err != nil {
		t.Fatal(err)
	}
	if pid, _ := waitServing(t, port, 2, 10*time.Second); pid == oldPID {
		t.Error("old worker still answers")
	}
	t.Logf("errors logged: %q", b.matches(`.*too many open files.*`))
}

// A full disk under the status file: the bridge says the file could not be
// updated, and serving goes on through restarts; once there is room the file
// is right again.
func TestStatusFileDiskFull(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16k"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("mount a 16k tmpfs: %v", err)
		}
		t.Skipf("cannot mount a 16k tmpfs (needs root or CAP_SYS_ADMIN): %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	status := filepath.Join(dir, "status")
	port := freePort(t)
	b := startBridge(t, fmt.Sprintf("--port=127.0.0.1:%d", port), "--interval=0", "--status-file="+status, "--", workerBin)
	oldPID, _ := waitServing(t, port, 1, 10*time.Second)
	for deadline := time.Now().Add(5 * time.Second); readStatus(t, status) != fmt.Sprintf("1:%d\n", oldPID); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("status file %q", readStatus(t, status))
		}
	}
	// Fill the disk.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := f.Write(make([]byte, 1024)); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	f.Close()

	syscall.Kill(b.pid, syscall.SIGHUP)
	b.waitLine(5*time.Second, `^failed to update the status file: .*no space left on device$`, 1)
	newPID, _ := waitServing(t, port, 2, 10*time.Second)
	if newPID == oldPID {
		t.Fatal("old worker still answers")
	}
	if !proc.WaitDead(oldPID, 5*time.Second) {
		t.Errorf("old worker %d still runs", oldPID)
	}
	for end := time.Now().Add(500 * time.Millisecond); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		if pid, _, err := get(port); err != nil || pid != newPID {
			t.Fatalf("got pid %d err %v; want the new generation (pid %d)", pid, err, newPID)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("files left on the full disk: %v", ents)
	}

	os.Remove(filler)
	syscall.Kill(b.pid, syscall.SIGHUP)
	pid3, _ := waitServing(t, port, 3, 10*time.Second)
	for deadline := time.Now().Add(5 * time.Second); readStatus(t, status) != fmt.Sprintf("3:%d\n", pid3); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("status file %q once there is room, want %q", readStatus(t, status), fmt.Sprintf("3:%d\n", pid3))
		}
	}
}

// A storm of 1,000 HUPs in about half a second: few generations (HUPs during a restart make one more
// restart), one live generation at the end that serves, and nothing leaked:
// no descriptor, no zombie, no old worker.
func TestHUPStorm(t *testing.T) {
	dir := t.TempDir()
	status := filepath.Join(dir, "status")
	port := freePort(t)
	const interval = 200 * time.Millisecond
	b := startBridge(t, fmt.Sprintf("--port=127.0.0.1:%d", port), "--interval=0.2", "--status-file="+status, "--", workerBin)
	waitServing(t, port, 1, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	fds := proc.FDCount(b.pid)

	t0 := time.Now()
	// Two at a time, a millisecond apart: most are delivered one by one
	// (the kernel merges a HUP into one still pending), many during a
	// restart.
	for i := 0; i < 1000; i++ {
		if err := syscall.Kill(b.pid, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			time.Sleep(time.Millisecond)
		}
	}
	storm := time.Since(t0)

	// Wait until the starts stop and one generation is left.
	var starts int
	var final string
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		n := b.count(`^starting new worker`)
		data, _ := os.ReadFile(status)
		if n == starts && strings.Count(string(data), "\n") == 1 && time.Since(t0) > storm+3*interval {
			final = string(data)
			break
		}
		starts = n
		if time.Now().After(deadline) {
			t.Fatalf("no steady state within 20s: %d starts, status file %q", n, data)
		}
	}
	bound := 2 + int(storm/interval) + 1
	t.Logf("1000 HUPs in %v: %d workers started (bound %d); status %q", storm, starts, bound, final)
	if starts-1 > bound {
		t.Errorf("%d new generations for 1000 HUPs in %v with --interval=%v, want at most %d", starts-1, storm, interval, bound)
	}
	if starts < 2 {
		t.Errorf("the HUPs started no new generation")
	}
	gen, pid := 0, 0
	fmt.Sscanf(final, "%d:%d", &gen, &pid)
	if gen != starts {
		t.Errorf("status file shows generation %d, want the last, %d", gen, starts)
	}
	if got, g := waitServing(t, port, gen, 5*time.Second); got != pid || g != gen {
		t.Errorf("pid %d gen %d answers, want %d gen %d", got, g, pid, gen)
	}
	time.Sleep(200 * time.Millisecond)
	kids, zombies := children(b.pid)
	if len(kids) != 1 || kids[0] != pid || zombies != 0 {
		t.Errorf("bridge's children %v (%d zombies), want only %d", kids, zombies, pid)
	}
	if n := proc.FDCount(b.pid); n != fds {
		t.Errorf("bridge holds %d descriptors, %d before the storm", n, fds)
	}
	for _, m := range b.matches(`^starting new worker (\d+)$`) {
		if p, _ := strconv.Atoi(m[1]); p != pid && proc.Alive(p) {
			t.Errorf("old worker %d still runs", p)
		}
	}
}
