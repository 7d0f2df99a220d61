package main

// End-to-end tests of the ss-bridge binary. TestMain builds the binary and the test worker
// (internal/testworker) once; every test runs the bridge as a subprocess in its own process
// group, reads its combined stdout/stderr, and cleans up the bridge and every worker.
//
// Set SS_BRIDGE_TEST_BIN to run the suite against another binary (for example
// /usr/bin/start_server, to see which expectations Perl's Server::Starter 0.35 meets), and
// SS_BRIDGE_TEST_RACE=1 to build the bridge with -race (a data race it reports fails the
// test that ran it).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
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

var (
	e2eBridgeBin string // the ss-bridge binary under test
	e2eWorkerBin string // internal/testworker
	e2eBinDir    string
)

func TestMain(m *testing.M) {
	os.Exit(e2eMain(m))
}

func e2eMain(m *testing.M) int {
	// Descriptors this process inherited without close-on-exec (from the shell that ran
	// `go test`) would be passed on to every bridge and so to its workers; mark them
	// close-on-exec so that the descriptor tests see only what the bridge itself passes.
	testkit.CloseOnExecInherited()

	bins, err := testkit.Build("e2e", "../..", os.Getenv("SS_BRIDGE_TEST_BIN"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(bins.Dir)
	e2eBinDir, e2eBridgeBin, e2eWorkerBin = bins.Dir, bins.Bridge, bins.Worker
	return m.Run()
}

// ---------------------------------------------------------------------------------------
// Output capture

type logLine struct {
	at   time.Time
	text string
}

// logBuf collects a process's output as timestamped lines; safe for concurrent use.
type logBuf struct {
	mu      sync.Mutex
	all     bytes.Buffer
	lines   []logLine
	partial []byte
}

func (l *logBuf) Write(p []byte) (int, error) {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.all.Write(p)
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, logLine{now, string(l.partial[:i])})
		l.partial = l.partial[i+1:]
	}
	return len(p), nil
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.all.String()
}

// Lines returns the complete lines so far (and a trailing partial line, if any).
func (l *logBuf) Lines() []logLine {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := append([]logLine(nil), l.lines...)
	if len(l.partial) > 0 {
		out = append(out, logLine{time.Now(), string(l.partial)})
	}
	return out
}

var re = testkit.Regexp

type match struct {
	idx  int // line index
	at   time.Time
	line string
	sub  []string
}

// find returns the nth (1-based) line matching pattern.
func findLine(lines []logLine, pattern string, nth int) (match, bool) {
	r := re(pattern)
	n := 0
	for i, l := range lines {
		if sub := r.FindStringSubmatch(l.text); sub != nil {
			n++
			if n == nth {
				return match{i, l.at, l.text, sub}, true
			}
		}
	}
	return match{}, false
}

func countLines(lines []logLine, pattern string) int {
	r := re(pattern)
	n := 0
	for _, l := range lines {
		if r.MatchString(l.text) {
			n++
		}
	}
	return n
}

// ---------------------------------------------------------------------------------------
// The bridge process

type bridge struct {
	t    testing.TB
	cmd  *exec.Cmd
	pid  int
	log  *logBuf
	done chan struct{}
	werr error // result of Wait, valid once done is closed
	args []string
}

// bridgeConfig is how to start the bridge; zero values mean the defaults.
type bridgeConfig struct {
	bin        string   // binary (default e2eBridgeBin)
	env        []string // extra environment variables
	dir        string   // working directory
	extraFiles []*os.File
}

// cleanEnv is the test's environment without anything that would change the bridge's or
// the worker's behaviour.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case name == "ENVDIR", name == "ENABLE_AUTO_RESTART", name == "AUTO_RESTART_INTERVAL",
			name == "KILL_OLD_DELAY", name == "NOTIFY_SOCKET", strings.HasPrefix(name, "SERVER_STARTER_"):
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

func startBridge(t testing.TB, args ...string) *bridge {
	t.Helper()
	return startBridgeWith(t, bridgeConfig{}, args...)
}

func startBridgeWith(t testing.TB, cfg bridgeConfig, args ...string) *bridge {
	t.Helper()
	bin := cfg.bin
	if bin == "" {
		bin = e2eBridgeBin
	}
	b := &bridge{t: t, log: &logBuf{}, done: make(chan struct{}), args: args}
	b.cmd = exec.Command(bin, args...)
	b.cmd.Env = cleanEnv(cfg.env...)
	b.cmd.Dir = cfg.dir
	b.cmd.ExtraFiles = cfg.extraFiles
	b.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Our own pipe rather than an io.Writer: workers keep the pipe open after the bridge
	// has exited, and exec.Cmd.Wait would wait for them.
	copied, err := startWithPipes(b.cmd, b.log, b.log)
	if err != nil {
		t.Fatalf("starting %s %q: %v", bin, args, err)
	}
	b.pid = b.cmd.Process.Pid
	go func() {
		b.werr = b.cmd.Wait()
		// the bridge's last lines: wait for the end of its output, unless
		// left-over workers keep the pipe open
		select {
		case <-copied:
		case <-time.After(500 * time.Millisecond):
		}
		close(b.done)
	}()
	t.Cleanup(b.cleanup)
	return b
}

func (b *bridge) cleanup() {
	// Workers are in the bridge's process group unless they left it.
	workers := b.workerPids()
	workers = append(workers, descendants(b.pid)...)
	select {
	case <-b.done:
	default:
		syscall.Kill(b.pid, syscall.SIGTERM)
		select {
		case <-b.done:
		case <-time.After(5 * time.Second):
			b.t.Errorf("cleanup: bridge %d did not exit within 5s of SIGTERM; killing it", b.pid)
			syscall.Kill(b.pid, syscall.SIGKILL)
			<-b.done
		}
	}
	syscall.Kill(-b.pid, syscall.SIGKILL)
	for _, pid := range workers {
		killIfOurs(pid)
	}
	if strings.Contains(b.log.String(), "WARNING: DATA RACE") {
		b.t.Errorf("the bridge reported a data race")
	}
	if b.t.Failed() {
		b.t.Logf("bridge %q output:\n%s", b.args, b.log.String())
	}
}

// killIfOurs SIGKILLs pid if it is still one of the programs the tests run as workers.
func killIfOurs(pid int) {
	st, ok := proc.ReadStat(pid)
	if !ok || st.State == 'Z' {
		return
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	c := string(cmdline)
	if strings.Contains(c, "testworker") || strings.HasPrefix(c, "sleep") || strings.HasPrefix(c, "sh") ||
		strings.Contains(c, "perl") || strings.Contains(c, "ss-bridge") || strings.Contains(c, e2eBinDir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// workerPids returns every pid in a "starting new worker N" line so far.
func (b *bridge) workerPids() []int {
	var pids []int
	r := re(`^starting new worker (\d+)$`)
	for _, l := range b.log.Lines() {
		if m := r.FindStringSubmatch(l.text); m != nil {
			pid, _ := strconv.Atoi(m[1])
			pids = append(pids, pid)
		}
	}
	return pids
}

func (b *bridge) signal(sig syscall.Signal) {
	b.t.Helper()
	if err := syscall.Kill(b.pid, sig); err != nil {
		b.t.Fatalf("kill(%d, %v): %v", b.pid, sig, err)
	}
}

func (b *bridge) exited() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// wait waits up to timeout for the bridge to exit and returns its exit code (-1 if it was
// killed by a signal); it fails the test on timeout.
func (b *bridge) wait(timeout time.Duration) int {
	b.t.Helper()
	select {
	case <-b.done:
	case <-time.After(timeout):
		b.t.Fatalf("bridge %d did not exit within %v", b.pid, timeout)
	}
	return b.cmd.ProcessState.ExitCode()
}

// waitLine waits for the nth (1-based) output line matching pattern.
func (b *bridge) waitLine(timeout time.Duration, pattern string, nth int) match {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m, ok := findLine(b.log.Lines(), pattern, nth); ok {
			return m
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("timed out after %v waiting for output line #%d matching %q; output so far:\n%s",
				timeout, nth, pattern, b.log.String())
		}
		if b.exited() {
			// give the output copier a moment, then look once more
			time.Sleep(50 * time.Millisecond)
			if m, ok := findLine(b.log.Lines(), pattern, nth); ok {
				return m
			}
			b.t.Fatalf("bridge exited (%v) before printing line #%d matching %q; output:\n%s",
				b.werr, nth, pattern, b.log.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (b *bridge) count(pattern string) int {
	return countLines(b.log.Lines(), pattern)
}

// worker waits for the nth "starting new worker N" line and returns N.
func (b *bridge) worker(nth int, timeout time.Duration) int {
	b.t.Helper()
	m := b.waitLine(timeout, `^starting new worker (\d+)$`, nth)
	pid, _ := strconv.Atoi(m.sub[1])
	return pid
}

// expectSequence checks that the output contains lines matching the patterns, in this
// order (other lines may come between them), and returns the matches.
func (b *bridge) expectSequence(patterns ...string) []match {
	b.t.Helper()
	lines := b.log.Lines()
	var out []match
	start := 0
	for _, p := range patterns {
		r := re(p)
		found := false
		for i := start; i < len(lines); i++ {
			if sub := r.FindStringSubmatch(lines[i].text); sub != nil {
				out = append(out, match{i, lines[i].at, lines[i].text, sub})
				start = i + 1
				found = true
				break
			}
		}
		if !found {
			b.t.Fatalf("output lacks a line matching %q after line %d (expected in order: %q); output:\n%s",
				p, start, patterns, b.log.String())
		}
	}
	return out
}

// startWithPipes starts cmd with its stdout and stderr on pipes copied into stdout and
// stderr (one pipe if they are the same) by goroutines of their own, so that cmd.Wait
// returns when the process exits even if its children still hold the pipes.
//
// The returned channel is closed once the copiers have seen the end of every pipe.
func startWithPipes(cmd *exec.Cmd, stdout, stderr io.Writer) (<-chan struct{}, error) {
	r1, w1, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = w1, w1
	var r2, w2 *os.File
	if stderr != stdout {
		r2, w2, err = os.Pipe()
		if err != nil {
			r1.Close()
			w1.Close()
			return nil, err
		}
		cmd.Stderr = w2
	}
	err = cmd.Start()
	w1.Close()
	if w2 != nil {
		w2.Close()
	}
	if err != nil {
		r1.Close()
		if r2 != nil {
			r2.Close()
		}
		return nil, err
	}
	var wg sync.WaitGroup
	copyFrom := func(w io.Writer, r *os.File) {
		wg.Add(1)
		go func() { defer wg.Done(); io.Copy(w, r); r.Close() }()
	}
	copyFrom(stdout, r1)
	if r2 != nil {
		copyFrom(stderr, r2)
	}
	copied := make(chan struct{})
	go func() { wg.Wait(); close(copied) }()
	return copied, nil
}

// ---------------------------------------------------------------------------------------
// Running short-lived invocations (--stop, --restart, errors)

type runResult struct {
	stdout, stderr string
	code           int
	pid            int
	took           time.Duration
	timedOut       bool
}

// runBridgeCmd runs the bridge to completion (killing its process group after timeout). The
// bridge leads its own process group, so res.pid is also the group of anything it left.
func runBridgeCmd(t testing.TB, timeout time.Duration, env []string, args ...string) runResult {
	t.Helper()
	var stdout, stderr logBuf
	cmd := exec.Command(e2eBridgeBin, args...)
	cmd.Env = cleanEnv(env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	copied, err := startWithPipes(cmd, &stdout, &stderr)
	if err != nil {
		t.Fatalf("starting %q: %v", args, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	res := runResult{pid: cmd.Process.Pid}
	select {
	case <-done:
	case <-time.After(timeout):
		res.timedOut = true
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
	select { // the end of the output, unless left-over children keep the pipes open
	case <-copied:
	case <-time.After(500 * time.Millisecond):
	}
	res.took = time.Since(start)
	res.stdout, res.stderr = stdout.String(), stderr.String()
	res.code = cmd.ProcessState.ExitCode()
	return res
}

// ---------------------------------------------------------------------------------------
// Files

type genPid struct{ gen, pid int }

func readStatusFile(path string) (string, []genPid, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	var out []genPid
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		g, p, ok := strings.Cut(line, ":")
		gen, err1 := strconv.Atoi(g)
		pid, err2 := strconv.Atoi(p)
		if !ok || err1 != nil || err2 != nil {
			return string(data), nil, fmt.Errorf("malformed status line %q", line)
		}
		out = append(out, genPid{gen, pid})
	}
	return string(data), out, nil
}

// waitStatus waits until the status file's content is exactly want.
func waitStatus(t testing.TB, path, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	var lastErr error
	for time.Now().Before(deadline) {
		data, err := os.ReadFile(path)
		last, lastErr = string(data), err
		if err == nil && last == want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("status file %s: want %q within %v, last read %q (err %v)", path, want, timeout, last, lastErr)
}

func statusLine(gen, pid int) string { return fmt.Sprintf("%d:%d\n", gen, pid) }

// waitFileContains waits until the file at path contains every one of subs.
func waitFileContains(t testing.TB, path string, timeout time.Duration, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		data, _ := os.ReadFile(path)
		ok := true
		for _, s := range subs {
			if !strings.Contains(string(data), s) {
				ok = false
			}
		}
		if ok {
			return string(data)
		}
		if time.Now().After(deadline) {
			t.Fatalf("file %s does not contain %q after %v; content:\n%s", path, subs, timeout, data)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// setBuild sets BUILD=build in envdir, which the tests' worker scripts read at each start
// to behave as a good or a bad build.
func setBuild(t testing.TB, envdir, build string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(envdir, "BUILD"), []byte(build+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// makeEnvdir makes an empty --envdir in dir.
func makeEnvdir(t testing.TB, dir string) string {
	t.Helper()
	envdir := filepath.Join(dir, "env")
	if err := os.Mkdir(envdir, 0o755); err != nil {
		t.Fatal(err)
	}
	return envdir
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// ---------------------------------------------------------------------------------------
// Workers: an env-dumping shell worker, the Go test worker

// envDumpWorker is a worker that writes its environment to dir/env.<generation> (atomically)
// and then sleeps.
func envDumpWorker(dir string) []string {
	return []string{"sh", "-c", `f='` + dir + `'/env.$SERVER_STARTER_GENERATION; env > "$f.tmp" && mv "$f.tmp" "$f"; exec sleep 1000`}
}

// readEnvDump waits for dir/env.<gen> and returns it as a map.
func readEnvDump(t testing.TB, dir string, gen int, timeout time.Duration) map[string]string {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprintf("env.%d", gen))
	deadline := time.Now().Add(timeout)
	for {
		data, err := os.ReadFile(path)
		if err == nil {
			env := map[string]string{}
			for _, line := range strings.Split(string(data), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					env[k] = v
				}
			}
			return env
		}
		if time.Now().After(deadline) {
			t.Fatalf("worker of generation %d did not write %s within %v", gen, path, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// goWorker returns the command line of the Go test worker.
func goWorker(flags ...string) []string {
	return append([]string{e2eWorkerBin}, flags...)
}

// cmdArgs joins bridge options, "--" and the worker command.
func cmdArgs(opts []string, worker []string) []string {
	out := append([]string{}, opts...)
	out = append(out, "--")
	return append(out, worker...)
}

// ---------------------------------------------------------------------------------------
// Network

// The helpers shared with the other suites, under this suite's names.
var (
	e2eGoBuild = testkit.GoBuild
	freePort   = testkit.FreePort
	parseBody  = testkit.ParseAnswer
	httpBody   = testkit.Body
)

func freeUDPPort(t testing.TB) int {
	t.Helper()
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func hasIPv6Loopback() bool {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func newClient(dial func(ctx context.Context, network, addr string) (net.Conn, error), keepAlive bool, timeout time.Duration) *http.Client {
	tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 64, DialContext: dial}
	return &http.Client{Transport: tr, Timeout: timeout}
}

// getPidGen does one GET http://addr/ on a new connection.
func getPidGen(addr string) (pid, gen int, err error) {
	c := newClient(nil, false, 3*time.Second)
	defer c.CloseIdleConnections()
	return testkit.Ask(c, "http://"+addr+"/")
}

func unixDialer(path string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}

// getPidGenUnix does one GET over the unix socket at path.
func getPidGenUnix(path string) (pid, gen int, err error) {
	c := newClient(unixDialer(path), false, 3*time.Second)
	defer c.CloseIdleConnections()
	return testkit.Ask(c, "http://unix/")
}

// waitServing polls addr until a worker of generation gen answers, returning its pid.
func waitServing(t testing.TB, addr string, gen int, timeout time.Duration) int {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	var lastGen int
	for time.Now().Before(deadline) {
		pid, g, err := getPidGen(addr)
		if err == nil && g == gen {
			return pid
		}
		lastErr, lastGen = err, g
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no worker of generation %d answered on %s within %v (last: gen %d, err %v)", gen, addr, timeout, lastGen, lastErr)
	return 0
}

func getEnvHTTP(t testing.TB, addr string) map[string]string {
	t.Helper()
	c := newClient(nil, false, 3*time.Second)
	defer c.CloseIdleConnections()
	body, err := httpBody(c, "http://"+addr+"/env")
	if err != nil {
		t.Fatalf("GET http://%s/env: %v", addr, err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(body, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env
}

// ---------------------------------------------------------------------------------------
// Processes

func descendants(pid int) []int {
	procs := proc.All()
	var out []int
	frontier := []int{pid}
	for len(frontier) > 0 {
		p := frontier[0]
		frontier = frontier[1:]
		for _, st := range procs {
			if st.PPID == p {
				out = append(out, st.PID)
				frontier = append(frontier, st.PID)
			}
		}
	}
	return out
}

// procsInGroup returns the live processes of process group pgrp.
func procsInGroup(pgrp int) []int {
	var out []int
	for _, st := range proc.All() {
		if st.Pgrp == pgrp && st.State != 'Z' {
			out = append(out, st.PID)
		}
	}
	return out
}

// procsWithCmdline returns the live processes whose command line contains s.
func procsWithCmdline(s string) []int {
	var out []int
	for _, st := range proc.All() {
		if st.State == 'Z' || st.PID == os.Getpid() {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", st.PID))
		if err == nil && bytes.Contains(data, []byte(s)) {
			out = append(out, st.PID)
		}
	}
	return out
}

// fdTargets returns pid's open descriptors and what they point to.
func fdTargets(pid int) (map[int]string, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
		if err != nil {
			continue // closed meanwhile
		}
		out[fd] = target
	}
	return out, nil
}

// waitExec waits until pid runs a program whose argv[0] ends with name (i.e. it has
// passed execve).
func waitExec(t testing.TB, pid int, name string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		argv0, _, _ := bytes.Cut(data, []byte{0})
		if strings.HasSuffix(string(argv0), name) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d does not run %s after %v (cmdline %q)", pid, name, timeout, data)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitAsleep waits until pid (a sleep(1) worker) is blocked in nanosleep or
// clock_nanosleep: it has then finished starting (ld.so and setlocale have closed the
// libraries and locale files they opened) and opens nothing more, so its descriptors are
// what it inherited. Unlike a pause, this cannot be outrun by a slow start on a loaded
// machine.
func waitAsleep(t testing.TB, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var data []byte
	for {
		// The first field of /proc/PID/syscall is the number of the system call the
		// process is blocked in ("running" when it is not blocked).
		data, _ = os.ReadFile(fmt.Sprintf("/proc/%d/syscall", pid))
		nr, _, _ := strings.Cut(string(data), " ")
		if nr == strconv.Itoa(unix.SYS_CLOCK_NANOSLEEP) || nr == strconv.Itoa(unix.SYS_NANOSLEEP) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d is not asleep after %v (/proc/%d/syscall: %q)", pid, timeout, pid, data)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// listenInode returns the inode of the TCP socket listening on port (from /proc/net/tcp*).
func listenInode(port int) (string, error) {
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" {
				continue
			}
			if strings.HasSuffix(fields[1], fmt.Sprintf(":%04X", port)) {
				fh.Close()
				return fields[9], nil
			}
		}
		fh.Close()
	}
	return "", errors.New("no listening socket found")
}

// fdFlags returns the "flags:" field of /proc/pid/fdinfo/fd.
func fdFlags(pid, fd int) (int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 8, 64)
		}
	}
	return 0, fmt.Errorf("no flags in fdinfo %d/%d", pid, fd)
}

func mySid() int {
	st, _ := proc.ReadStat(os.Getpid())
	return st.Session
}
