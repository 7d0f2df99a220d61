//go:build linux

// Tests of ss-bridge under a real systemd (257, booted in a throwaway nspawn container by
// internal/systemdtest), with units derived from the examples in this directory: socket
// activation, sd_notify (READY, RELOADING, STATUS, watchdog), reload and restart under
// load, the fd store, the workers' private NOTIFY_SOCKET, --listen-fds, and
// systemd-analyze verify of every example unit.
package systemd_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/systemdtest"
	"github.com/ss-bridge/ss-bridge/internal/testkit"
	"github.com/ss-bridge/ss-bridge/notify"
)

// ---------------------------------------------------------------------------- the rig

// Binaries are built once (with BuildGo, into the first container that needs them) and
// copied into the next containers.
var builds struct {
	sync.Mutex
	dir  string
	host map[string]string // package -> built binary on the host
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builds.dir != "" {
		os.RemoveAll(builds.dir)
	}
	os.Exit(code)
}

// install builds (or copies) the main package pkg into the container's shared directory
// under name and returns its path inside the container.
func install(t *testing.T, c *systemdtest.Container, pkg, name string) string {
	t.Helper()
	builds.Lock()
	defer builds.Unlock()
	if src, ok := builds.host[pkg]; ok {
		if err := copyFile(src, filepath.Join(c.HostDir(), name)); err != nil {
			t.Fatal(err)
		}
		return c.GuestPath(name)
	}
	guest, err := c.BuildGo(pkg, name)
	if err != nil {
		t.Fatal(err)
	}
	if builds.dir == "" {
		if builds.dir, err = os.MkdirTemp("", "systemd-test-bin-"); err != nil {
			t.Fatal(err)
		}
		builds.host = map[string]string{}
	}
	keep := filepath.Join(builds.dir, strconv.Itoa(len(builds.host))+"-"+name)
	if err := copyFile(filepath.Join(c.HostDir(), name), keep); err != nil {
		t.Fatal(err)
	}
	builds.host[pkg] = keep
	return guest
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

// rig is a booted container with ss-bridge and the test worker in it, and a free port
// for the app's socket.
type rig struct {
	t      *testing.T
	c      *systemdtest.Container
	bridge string // ss-bridge, inside
	worker string // internal/testworker, inside
	app    string // the app's wrapper script, inside (see writeApp)
	addr   string // 127.0.0.1:PORT
}

func newRig(t *testing.T) *rig {
	t.Helper()
	start := time.Now()
	c := systemdtest.Boot(t)
	r := &rig{t: t, c: c}
	r.bridge = install(t, c, "../../cmd/ss-bridge", "ss-bridge")
	r.worker = install(t, c, "../../internal/testworker", "testworker")
	r.addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r.writeApp("app", defaultApp)
	t.Logf("container booted and binaries installed in %v", time.Since(start).Round(time.Millisecond))
	return r
}

// defaultApp is the worker of the app units: the test worker, which says READY=1 once it
// serves (the units use --ready=notify), with the unit's arguments; but when
// /run/app-fail exists it exits 3 at once, as a new version that cannot start would.
const defaultApp = `#!/bin/sh
if [ -e /run/app-fail ]; then
	echo "app: /run/app-fail exists, exiting 3" >&2
	exit 3
fi
exec @WORKER@ -ready "$@"
`

// writeApp writes a shell script into the shared directory, with @WORKER@ standing for
// the test worker, and makes it the app (the worker command of the units).
func (r *rig) writeApp(name, script string) {
	r.t.Helper()
	script = strings.ReplaceAll(script, "@WORKER@", r.worker)
	if err := os.WriteFile(filepath.Join(r.c.HostDir(), name), []byte(script), 0o755); err != nil {
		r.t.Fatal(err)
	}
	r.app = r.c.GuestPath(name)
}

// unit returns the example unit file of this directory named file, with the ports of
// the examples replaced by the rig's address, /usr/local/bin/ss-bridge by the built
// ss-bridge, /usr/local/bin/app by the app script, and, when execStart is not "", its
// ExecStart= (with continuation lines) replaced by execStart, in which @BRIDGE@, @APP@
// and @ADDR@ are replaced too.
func (r *rig) unit(file, execStart string) string {
	r.t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		r.t.Fatal(err)
	}
	repl := strings.NewReplacer(
		"127.0.0.1:8080", r.addr, "127.0.0.1:8081", r.addr,
		"/usr/local/bin/ss-bridge", r.bridge, "/usr/local/bin/app", r.app,
		"@BRIDGE@", r.bridge, "@APP@", r.app, "@ADDR@", r.addr)
	text := string(b)
	if execStart != "" {
		var out []string
		lines := strings.Split(text, "\n")
		replaced := false
		for i := 0; i < len(lines); i++ {
			if !strings.HasPrefix(lines[i], "ExecStart=") {
				out = append(out, lines[i])
				continue
			}
			for strings.HasSuffix(lines[i], `\`) && i+1 < len(lines) {
				i++
			}
			out = append(out, "ExecStart="+execStart)
			replaced = true
		}
		if !replaced {
			r.t.Fatalf("%s has no ExecStart=", file)
		}
		text = strings.Join(out, "\n")
	}
	return repl.Replace(text)
}

// installUnits writes units (name -> content) into the container.
func (r *rig) installUnits(units map[string]string) {
	r.t.Helper()
	for name, content := range units {
		if err := r.c.WriteUnit(name, content); err != nil {
			r.t.Fatal(err)
		}
	}
}

// appUnits installs app.socket and app.service, derived from the examples; execStart as
// for unit ("" keeps the example's options).
func (r *rig) appUnits(execStart string) {
	r.t.Helper()
	r.installUnits(map[string]string{
		"app.socket":  r.unit("app.socket", ""),
		"app.service": r.unit("app.service", execStart),
	})
}

func (r *rig) systemctl(args ...string) string {
	r.t.Helper()
	start := time.Now()
	out, err := r.c.Systemctl(args...)
	if err != nil {
		r.dumpJournal()
		r.t.Fatalf("systemctl %s (after %v): %v", strings.Join(args, " "), time.Since(start).Round(time.Millisecond), err)
	}
	return out
}

func (r *rig) exec(args ...string) string {
	r.t.Helper()
	out, err := r.c.Exec(args...)
	if err != nil {
		r.t.Fatal(err)
	}
	return out
}

func (r *rig) property(unit, name string) string {
	r.t.Helper()
	v, err := r.c.Property(unit, name)
	if err != nil {
		r.t.Fatal(err)
	}
	return v
}

func (r *rig) waitProperty(unit, name, want string, timeout time.Duration) {
	r.t.Helper()
	if err := r.c.WaitProperty(unit, name, want, timeout); err != nil {
		r.dumpJournal()
		r.t.Fatal(err)
	}
}

func (r *rig) journal(unit string) string {
	r.t.Helper()
	j, err := r.c.Journal(unit)
	if err != nil {
		r.t.Fatal(err)
	}
	return j
}

// dumpJournal logs the container's journal (the units' part of it) once.
func (r *rig) dumpJournal() {
	if j, err := r.c.Exec("journalctl", "--no-pager", "-q", "-o", "short-precise", "-u", "app*", "-u", "ss-bridge*"); err == nil {
		r.t.Logf("journal:\n%s", j)
	}
}

// waitJournal waits until the unit's journal matches re, and returns the submatches.
func (r *rig) waitJournal(unit string, re *regexp.Regexp, timeout time.Duration) []string {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		j := r.journal(unit)
		if m := re.FindStringSubmatch(j); m != nil {
			return m
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("after %v the journal of %s does not match %q:\n%s", timeout, unit, re, j)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ppid is the parent of a process inside the container.
func (r *rig) ppid(pid int) int {
	r.t.Helper()
	stat := r.exec("cat", fmt.Sprintf("/proc/%d/stat", pid))
	fields := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
	n, err := strconv.Atoi(fields[1])
	if err != nil {
		r.t.Fatalf("/proc/%d/stat: %q", pid, stat)
	}
	return n
}

// environ is the environment a process inside the container was executed with.
func (r *rig) environ(pid int) map[string]string {
	r.t.Helper()
	env := map[string]string{}
	for _, kv := range strings.Split(r.exec("cat", fmt.Sprintf("/proc/%d/environ", pid)), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

func (r *rig) alive(pid int) bool {
	r.t.Helper()
	_, err := r.c.Exec("test", "-e", fmt.Sprintf("/proc/%d", pid))
	return err == nil
}

func (r *rig) mainPID(unit string) int {
	r.t.Helper()
	n, err := strconv.Atoi(r.property(unit, "MainPID"))
	if err != nil || n == 0 {
		r.t.Fatalf("MainPID of %s: %v %d", unit, err, n)
	}
	return n
}

// listeningSocket returns the inode of the one socket listening on the rig's address,
// from /proc/net/tcp (the container shares the host's network).
func (r *rig) listeningSocket() string {
	r.t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		r.t.Fatal(err)
	}
	_, port, _ := strings.Cut(r.addr, ":")
	n, _ := strconv.Atoi(port)
	local := fmt.Sprintf("0100007F:%04X", n)
	var inodes []string
	for _, line := range strings.Split(string(b), "\n")[1:] {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
		f := strings.Fields(line)
		if len(f) >= 10 && f[1] == local && f[3] == "0A" {
			inodes = append(inodes, f[9])
		}
	}
	if len(inodes) != 1 {
		r.t.Fatalf("sockets listening on %s: %v, want one", r.addr, inodes)
	}
	return inodes[0]
}

var freePort = testkit.FreePort

// ---------------------------------------------------------------------------- HTTP

// get sends one HTTP/1.0 request on a new connection and returns the body of a 200.
func get(addr, path string) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: app\r\n\r\n", path); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return string(body), err
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("HTTP %s", resp.Status)
	}
	return string(body), nil
}

// ask gets / and returns the answering worker's pid and generation.
func (r *rig) ask() (pid, gen int) {
	r.t.Helper()
	body, err := get(r.addr, "/")
	if err != nil {
		r.dumpJournal()
		r.t.Fatalf("GET %s/: %v", r.addr, err)
	}
	return parseAnswer(r.t, body)
}

func parseAnswer(t *testing.T, body string) (pid, gen int) {
	t.Helper()
	pid, gen, err := testkit.ParseAnswer(body)
	if err != nil {
		t.Fatal(err)
	}
	return pid, gen
}

// startLoad sends requests from several goroutines, each on a new connection, until
// Finish.
func startLoad(addr string, goroutines int) *testkit.Load {
	return testkit.StartLoad(goroutines, 2*time.Millisecond, func(int) (int, error) {
		body, err := get(addr, "/")
		if err != nil {
			return 0, err
		}
		_, gen, err := testkit.ParseAnswer(body)
		return gen, err
	})
}

// ---------------------------------------------------------------------------- tests

// The example app.socket + app.service, as shipped (only paths and the port replaced):
// the first connection starts the service, is served, and systemctl shows ss-bridge's
// STATUS=.
func TestSocketActivatedStart(t *testing.T) {
	r := newRig(t)
	r.appUnits("")
	r.systemctl("start", "app.socket")
	if s := r.property("app.service", "ActiveState"); s != "inactive" {
		t.Fatalf("app.service is %s before the first connection", s)
	}

	start := time.Now()
	pid, gen := r.ask()
	t.Logf("first connection answered by worker %d gen %d in %v", pid, gen, time.Since(start).Round(time.Millisecond))
	if gen != 1 {
		t.Errorf("first answer from generation %d, want 1", gen)
	}
	r.waitProperty("app.service", "ActiveState", "active", 10*time.Second)
	main := r.mainPID("app.service")
	if p := r.ppid(pid); p != main {
		t.Errorf("worker %d is a child of %d, not of ss-bridge (MainPID %d)", pid, p, main)
	}
	want := fmt.Sprintf("generation 1 (pid %d) serving", pid)
	r.waitProperty("app.service", "StatusText", want, 5*time.Second)
	status, err := r.c.Systemctl("status", "--no-pager", "app.service")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(status, `Status: "`+want+`"`) {
		t.Errorf("systemctl status app.service lacks Status: %q:\n%s", want, status)
	}
	j := r.journal("app.service")
	for _, line := range []string{
		fmt.Sprintf("start_server (pid:%d) starting now...", main),
		fmt.Sprintf("starting new worker %d", pid),
		fmt.Sprintf("worker %d gen 1 serving", pid),
	} {
		if !strings.Contains(j, line) {
			t.Errorf("journal lacks %q:\n%s", line, j)
		}
	}
}

// systemctl reload returns once the new generation serves and the old one was told to go.
func TestReload(t *testing.T) {
	r := newRig(t)
	r.appUnits("")
	r.systemctl("start", "app.service")
	old, gen := r.ask()
	if gen != 1 {
		t.Fatalf("before reload: gen %d", gen)
	}

	start := time.Now()
	r.systemctl("reload", "app.service")
	took := time.Since(start)
	pid, gen := r.ask()
	t.Logf("systemctl reload took %v; the next request was answered by worker %d gen %d", took.Round(time.Millisecond), pid, gen)
	if gen != 2 || pid == old {
		t.Fatalf("right after systemctl reload, answered by worker %d gen %d; want generation 2 (the old worker was %d)", pid, gen, old)
	}
	for range 5 {
		if p, g := r.ask(); p != pid || g != 2 {
			t.Errorf("after the reload, answered by worker %d gen %d, want %d gen 2", p, g, pid)
		}
	}
	if s := r.property("app.service", "StatusText"); !regexp.MustCompile(fmt.Sprintf(`^generation 2 \(pid %d\) serving(; 1 old generation draining)?$`, pid)).MatchString(s) {
		t.Errorf("StatusText right after the reload: %q", s)
	}
	// The old generation was told to go before READY=1.
	r.waitJournal("app.service", regexp.MustCompile(fmt.Sprintf(`new worker is now running, sending TERM to old workers:%d\n`, old)), 5*time.Second)
	r.waitJournal("app.service", regexp.MustCompile(fmt.Sprintf(`worker %d got TERM\n`, old)), 5*time.Second)
	r.waitJournal("app.service", regexp.MustCompile(fmt.Sprintf(`old worker %d died, status:0\n`, old)), 5*time.Second)
	r.waitProperty("app.service", "StatusText", fmt.Sprintf("generation 2 (pid %d) serving", pid), 5*time.Second)
	if s := r.property("app.service", "ActiveState"); s != "active" {
		t.Errorf("ActiveState after the reload: %s", s)
	}
}

// A reload whose new generation cannot start ends (it does not hang), says so, and
// leaves the old generation serving; a later reload, once fixed, works.
func TestReloadFailure(t *testing.T) {
	r := newRig(t)
	r.appUnits("")
	r.systemctl("start", "app.service")
	old, _ := r.ask()

	r.exec("touch", "/run/app-fail")
	start := time.Now()
	// Bounded: a reload that never gets its final READY=1 would hang until systemd's
	// timeout (90 s).
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, reloadErr := r.c.ExecContext(ctx, nil, "systemctl", "reload", "app.service")
	took := time.Since(start)
	status := r.property("app.service", "StatusText")
	t.Logf("systemctl reload with a failing new generation: %v after %v; StatusText %q", reloadErr, took.Round(time.Millisecond), status)
	if ctx.Err() != nil {
		r.dumpJournal()
		t.Fatalf("systemctl reload still running after %v: a failed reload must end", took.Round(time.Millisecond))
	}
	failedRE := regexp.MustCompile(`new worker (\d+) seems to have failed to start, exit status:768\n`)
	m := r.waitJournal("app.service", failedRE, 5*time.Second)
	if reloadErr == nil {
		want := regexp.MustCompile(`^reload failed: new worker ` + m[1] + ` exited with status 768 before it was ready; `)
		if !want.MatchString(status) {
			t.Errorf("systemctl reload succeeded, and StatusText %q does not say that the reload failed (want it to match %q)", status, want)
		}
	}
	if s := r.property("app.service", "ActiveState"); s != "active" {
		t.Errorf("ActiveState after the failed reload: %s", s)
	}
	// The old generation keeps serving, through the retries.
	for deadline := time.Now().Add(2500 * time.Millisecond); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if pid, gen := r.ask(); pid != old || gen != 1 {
			t.Fatalf("after the failed reload, answered by worker %d gen %d, want the old worker %d gen 1", pid, gen, old)
		}
	}
	if n := len(failedRE.FindAllString(r.journal("app.service"), -1)); n < 2 {
		t.Errorf("the failed start was tried %d times in 2.5 s, want it retried", n)
	}
	if s := r.property("app.service", "StatusText"); !strings.Contains(s, "failed") {
		t.Errorf("StatusText while the new generation keeps failing: %q", s)
	}
	t.Logf("StatusText while retrying: %q", r.property("app.service", "StatusText"))

	// Fixed: the next reload brings up a new generation and retires the old one.
	r.exec("rm", "/run/app-fail")
	r.systemctl("reload", "app.service")
	pid, gen := r.ask()
	t.Logf("after the fix, reload: worker %d gen %d", pid, gen)
	if pid == old || gen < 3 {
		t.Errorf("after the fixed reload, answered by worker %d gen %d; want a new generation (> 2)", pid, gen)
	}
	r.waitJournal("app.service", regexp.MustCompile(fmt.Sprintf(`old worker %d died, status:0\n`, old)), 5*time.Second)
	r.waitProperty("app.service", "StatusText", fmt.Sprintf("generation %d (pid %d) serving", gen, pid), 5*time.Second)
}

// 50 reloads under continuous load lose no request.
func TestReloadsUnderLoad(t *testing.T) {
	const reloads = 50
	r := newRig(t)
	r.appUnits("")
	r.systemctl("start", "app.service")
	r.ask()

	l := startLoad(r.addr, 6)
	start := time.Now()
	var slowest time.Duration
	oldFirst := 0 // requests answered by the generation just told to go, right after a reload
	for i := range reloads {
		t0 := time.Now()
		if _, err := r.c.Systemctl("reload", "app.service"); err != nil {
			l.Finish(t, "reloads")
			r.dumpJournal()
			t.Fatalf("reload %d: %v", i+1, err)
		}
		slowest = max(slowest, time.Since(t0))
		// Each reload returns once its generation serves. The generation it replaces
		// has been told to go, but under load it may not have stopped accepting yet:
		// it may answer a request or two more, nothing older may.
		for try := 0; ; try++ {
			body, err := get(r.addr, "/")
			if err != nil {
				t.Fatalf("right after reload %d: %v", i+1, err)
			}
			_, gen := parseAnswer(t, body)
			if gen == i+2 {
				break
			}
			// Bounded in time, not in answers: on a loaded machine the old
			// worker may take a while to act on its TERM.
			if gen != i+1 || time.Since(t0) > slowest+3*time.Second {
				t.Fatalf("right after reload %d, answer %d: %q; want gen %d (or %d, draining, for 3 s)", i+1, try+1, body, i+2, i+1)
			}
			oldFirst++
		}
	}
	took := time.Since(start)
	time.Sleep(200 * time.Millisecond)
	l.Finish(t, fmt.Sprintf("%d reloads", reloads))
	t.Logf("%d reloads in %v (%v each on average, slowest %v); %d requests right after a reload were answered by the generation it had just told to go",
		reloads, took.Round(time.Millisecond), (took / reloads).Round(time.Millisecond), slowest.Round(time.Millisecond), oldFirst)

	pid, gen := r.ask()
	if gen != reloads+1 {
		t.Errorf("after %d reloads answered by gen %d, want %d", reloads, gen, reloads+1)
	}
	r.waitProperty("app.service", "StatusText", fmt.Sprintf("generation %d (pid %d) serving", gen, pid), 10*time.Second)
	if n := strings.Count(r.journal("app.service"), "seems to have failed to start"); n > 0 {
		t.Errorf("%d failed starts in the journal", n)
	}
	// Every old generation has drained and exited: ss-bridge has one child left.
	main := r.mainPID("app.service")
	children := strings.Fields(r.exec("sh", "-c", fmt.Sprintf("cat /proc/%d/task/*/children", main)))
	if len(children) != 1 || children[0] != strconv.Itoa(pid) {
		t.Errorf("ss-bridge's children after the reloads: %v, want [%d]", children, pid)
	}
}

// systemctl restart of the socket-activated unit under load refuses no connection: the
// socket unit holds the socket meanwhile.
func TestRestartSocketActivatedUnderLoad(t *testing.T) {
	r := newRig(t)
	r.appUnits("")
	r.systemctl("start", "app.service")
	oldMain := r.mainPID("app.service")
	oldWorker, _ := r.ask()

	l := startLoad(r.addr, 6)
	time.Sleep(300 * time.Millisecond)
	var mains []int
	for range 3 {
		start := time.Now()
		r.systemctl("restart", "app.service")
		mains = append(mains, r.mainPID("app.service"))
		t.Logf("systemctl restart took %v; ss-bridge is now %d", time.Since(start).Round(time.Millisecond), mains[len(mains)-1])
		time.Sleep(300 * time.Millisecond)
	}
	l.Finish(t, "3 restarts")

	pid, gen := r.ask()
	if main := r.mainPID("app.service"); main == oldMain || pid == oldWorker || gen != 1 {
		t.Errorf("after the restarts: ss-bridge %d (was %d), worker %d gen %d (was %d gen 1); want new processes, gen 1",
			main, oldMain, pid, gen, oldWorker)
	}
	if s := r.property("app.socket", "ActiveState"); s != "active" {
		t.Errorf("app.socket is %s", s)
	}
}

// The fd-store unit: ss-bridge binds the port itself and puts it in systemd's fd store;
// a restart gets the same socket back, refusing no connection.
func TestRestartFDStoreUnderLoad(t *testing.T) {
	r := newRig(t)
	r.installUnits(map[string]string{"app-fdstore.service": r.unit("app-fdstore.service", "")})
	const unit = "app-fdstore.service"
	r.systemctl("start", unit)
	if n := r.property(unit, "NFileDescriptorStore"); n != "1" {
		r.dumpJournal()
		t.Fatalf("NFileDescriptorStore = %s after the start, want 1", n)
	}
	worker, _ := r.ask()
	env := r.environ(worker)
	for _, k := range []string{"FDSTORE", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} {
		if v, ok := env[k]; ok {
			t.Errorf("the worker inherited %s=%s", k, v)
		}
	}
	if p := env["SERVER_STARTER_PORT"]; p != r.addr+"=3" {
		t.Errorf("SERVER_STARTER_PORT=%q", p)
	}
	inode := r.listeningSocket()
	t.Logf("the listening socket is inode %s", inode)

	oldMain := r.mainPID(unit)
	l := startLoad(r.addr, 6)
	time.Sleep(300 * time.Millisecond)
	for range 3 {
		start := time.Now()
		r.systemctl("restart", unit)
		t.Logf("systemctl restart took %v; ss-bridge is now %d", time.Since(start).Round(time.Millisecond), r.mainPID(unit))
		time.Sleep(300 * time.Millisecond)
	}
	l.Finish(t, "3 restarts of the fd-store unit")

	pid, gen := r.ask()
	if main := r.mainPID(unit); main == oldMain || pid == worker || gen != 1 {
		t.Errorf("after the restarts: ss-bridge %d (was %d), worker %d gen %d; want new processes, gen 1", main, oldMain, pid, gen)
	}
	if n := r.property(unit, "NFileDescriptorStore"); n != "1" {
		t.Errorf("NFileDescriptorStore = %s after the restarts, want 1", n)
	}
	if got := r.listeningSocket(); got != inode {
		t.Errorf("after the restarts the listening socket is inode %s, before it was %s: not the stored one", got, inode)
	}
	// The restarted ss-bridge got the socket back from the store, under its name.
	bridgeEnv := r.environ(r.mainPID(unit))
	if fds, names := bridgeEnv["LISTEN_FDS"], bridgeEnv["LISTEN_FDNAMES"]; fds != "1" || names != "ssb-"+notify.EncodeFDName(r.addr) {
		t.Errorf("the restarted ss-bridge got LISTEN_FDS=%q LISTEN_FDNAMES=%q, want 1 and %q", fds, names, "ssb-"+notify.EncodeFDName(r.addr))
	}
	j := r.journal(unit)
	if strings.Contains(j, "FDNAME= name is invalid") || strings.Contains(j, "failed to store") {
		t.Errorf("journal:\n%s", j)
	}

	// FileDescriptorStorePreserve=yes: the socket survives a stop too, as long as the unit
	// stays loaded (enabled, as installed), and a connection made while the unit is
	// stopped waits in it and is answered after the start.
	r.systemctl("enable", unit)
	r.systemctl("stop", unit)
	if n := r.property(unit, "NFileDescriptorStore"); n != "1" {
		t.Errorf("NFileDescriptorStore = %s while stopped, want 1 (FileDescriptorStorePreserve=yes)", n)
	}
	answer := make(chan string, 1)
	go func() {
		body, err := get(r.addr, "/")
		if err != nil {
			body = err.Error()
		}
		answer <- body
	}()
	time.Sleep(300 * time.Millisecond)
	r.systemctl("start", unit)
	select {
	case body := <-answer:
		if _, _, err := testkit.ParseAnswer(body); err != nil {
			t.Errorf("a request sent while the unit was stopped got %q", body)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("a request sent while the unit was stopped was not answered after the start")
	}
	if got := r.listeningSocket(); got != inode {
		t.Errorf("after stop and start the listening socket is inode %s, before it was %s", got, inode)
	}
}

// systemctl stop answers the requests in flight before the workers exit.
func TestStopDrains(t *testing.T) {
	r := newRig(t)
	r.appUnits("@BRIDGE@ --port=@ADDR@ --ready=notify --ready-timeout=30 --kill-timeout=60 -- @APP@ -latency 1s")
	r.systemctl("start", "app.service")
	worker, _ := r.ask()

	const inflight = 4
	answers := make(chan string, inflight)
	for range inflight {
		go func() {
			body, err := get(r.addr, "/")
			if err != nil {
				body = "error: " + err.Error()
			}
			answers <- body
		}()
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	r.systemctl("stop", "app.service")
	took := time.Since(start)
	t.Logf("systemctl stop took %v", took.Round(time.Millisecond))
	for range inflight {
		select {
		case body := <-answers:
			if want := fmt.Sprintf("pid=%d gen=1\n", worker); body != want {
				t.Errorf("a request in flight at the stop got %q, want %q", body, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a request in flight at the stop got no answer")
		}
	}
	if took < 500*time.Millisecond {
		t.Errorf("systemctl stop took %v: it did not wait for the 1 s requests", took)
	}
	if s, res := r.property("app.service", "ActiveState"), r.property("app.service", "Result"); s != "inactive" || res != "success" {
		t.Errorf("after the stop: ActiveState %s, Result %s", s, res)
	}
	j := r.journal("app.service")
	for _, line := range []string{
		fmt.Sprintf("received TERM, sending TERM to all workers:%d", worker),
		fmt.Sprintf("worker %d drained, exiting", worker),
		fmt.Sprintf("worker %d died, status:0", worker),
		"exiting",
	} {
		if !strings.Contains(j, line) {
			t.Errorf("journal lacks %q:\n%s", line, j)
		}
	}
}

// --worker-watchdog: a worker that sent WATCHDOG=1 once and then went silent is aborted
// and replaced; one that keeps pinging is left alone.
func TestWorkerWatchdog(t *testing.T) {
	r := newRig(t)
	r.writeApp("app-watchdog", `#!/bin/sh
# Generation 1 pings once and hangs; the next ones keep pinging.
if [ "$SERVER_STARTER_GENERATION" = 1 ]; then
	exec @WORKER@ -ready -watchdog-once
fi
exec @WORKER@ -ready -watchdog
`)
	r.appUnits("@BRIDGE@ --port=@ADDR@ --ready=notify --ready-timeout=30 --worker-watchdog=1 -- @APP@")
	r.systemctl("start", "app.service")
	hung, gen := r.ask()
	if gen != 1 {
		t.Fatalf("first answer from gen %d", gen)
	}
	env := r.environ(hung)
	if env["WATCHDOG_USEC"] != "1000000" {
		t.Errorf("the worker has WATCHDOG_USEC=%q, want 1000000", env["WATCHDOG_USEC"])
	}

	start := time.Now()
	var pid int
	for {
		// A request that gen 1 accepted just before it was aborted is
		// reset: an aborted worker answers nothing. Only the outcome counts.
		body, err := get(r.addr, "/")
		if err != nil {
			t.Logf("during the switch-over: %v", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if p, g := parseAnswer(t, body); g > 1 {
			pid, gen = p, g
			break
		}
		if time.Since(start) > 8*time.Second {
			r.dumpJournal()
			t.Fatalf("after %v still answered by gen 1", time.Since(start).Round(time.Millisecond))
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("gen %d (worker %d) serves %v after gen 1 was first asked", gen, pid, time.Since(start).Round(time.Millisecond))
	if gen != 2 {
		t.Errorf("replaced by gen %d, want 2", gen)
	}
	r.waitJournal("app.service", regexp.MustCompile(fmt.Sprintf(`worker %d sent no WATCHDOG=1 for 1s, aborting it and restarting\n`, hung)), 5*time.Second)
	r.waitJournal("app.service", regexp.MustCompile(fmt.Sprintf(`old worker %d died, status:\d+\n`, hung)), 5*time.Second)
	if r.alive(hung) {
		t.Errorf("the hung worker %d is still alive", hung)
	}
	r.waitProperty("app.service", "StatusText", fmt.Sprintf("generation 2 (pid %d) serving", pid), 5*time.Second)

	// Generation 2 pings every 0.5 s: it is not aborted.
	time.Sleep(3 * time.Second)
	if p, g := r.ask(); p != pid || g != 2 {
		t.Errorf("3 s later answered by worker %d gen %d, want %d gen 2", p, g, pid)
	}
	if n := strings.Count(r.journal("app.service"), "sent no WATCHDOG=1"); n != 1 {
		t.Errorf("%d watchdog expiries in the journal, want 1", n)
	}
	if s := r.property("app.service", "ActiveState"); s != "active" {
		t.Errorf("ActiveState %s", s)
	}
}

// A READY=1 sent to a worker's NOTIFY_SOCKET by a process that is not the worker or its
// descendant does not make the generation count as started.
func TestSpoofedNotifyIgnored(t *testing.T) {
	r := newRig(t)
	notifysend := install(t, r.c, "./testdata/notifysend", "notifysend")
	// The worker takes startDelay to start: every check below must be done
	// before that, each an exec into the container, slow on a loaded machine.
	const startDelay = 8 * time.Second
	r.appUnits("@BRIDGE@ --port=@ADDR@ --ready=notify --ready-timeout=30 -- @APP@ -start-delay " + startDelay.String())
	start := time.Now()
	r.systemctl("start", "--no-block", "app.service")
	r.waitProperty("app.service", "SubState", "start", 5*time.Second)
	main := r.mainPID("app.service")

	// The worker, once ss-bridge has started it.
	var worker int
	for deadline := time.Now().Add(5 * time.Second); worker == 0; time.Sleep(20 * time.Millisecond) {
		children := strings.Fields(r.exec("sh", "-c", fmt.Sprintf("cat /proc/%d/task/*/children", main)))
		if len(children) == 1 {
			worker, _ = strconv.Atoi(children[0])
		} else if time.Now().After(deadline) {
			t.Fatalf("ss-bridge %d has children %v", main, children)
		}
	}
	sock := r.environ(worker)["NOTIFY_SOCKET"]
	if !strings.HasPrefix(sock, "/") || sock == "/run/systemd/notify" {
		t.Fatalf("the worker's NOTIFY_SOCKET is %q", sock)
	}
	out := r.exec(notifysend, sock, `READY=1\nSTATUS=spoofed`)
	spoofer, _ := strconv.Atoi(strings.TrimSpace(out))
	t.Logf("process %d sent READY=1 to worker %d's %s %v after the start", spoofer, worker, sock, time.Since(start).Round(time.Millisecond))

	time.Sleep(500 * time.Millisecond)
	if time.Since(start) > startDelay/2 {
		t.Fatalf("too slow to check before the worker's own READY=1: %v", time.Since(start))
	}
	if s, sub := r.property("app.service", "ActiveState"), r.property("app.service", "SubState"); s != "activating" || sub != "start" {
		t.Errorf("after the spoofed READY=1: ActiveState %s, SubState %s; want activating, start", s, sub)
	}
	if s, want := r.property("app.service", "StatusText"), fmt.Sprintf("generation 1 (pid %d) starting", worker); s != want {
		t.Errorf("after the spoofed READY=1: StatusText %q, want %q", s, want)
	}
	if j := r.journal("app.service"); strings.Contains(j, fmt.Sprintf("worker %d gen 1 serving", worker)) {
		t.Errorf("the worker already serves (check too late?):\n%s", j)
	}
	r.waitJournal("app.service", regexp.MustCompile(fmt.Sprintf(`notify message from pid %d \(not worker %d or its descendant\) ignored\n`, spoofer, worker)), time.Second)
	if checked := time.Since(start); checked > startDelay {
		t.Fatalf("the checks took until %v, past the worker's start delay: they prove nothing", checked)
	}

	// The worker's own READY=1 counts.
	r.waitProperty("app.service", "ActiveState", "active", 10*time.Second)
	took := time.Since(start)
	t.Logf("app.service active %v after the start", took.Round(time.Millisecond))
	if took < startDelay {
		t.Errorf("app.service active %v after the start, before the worker's %v start delay", took, startDelay)
	}
	r.waitProperty("app.service", "StatusText", fmt.Sprintf("generation 1 (pid %d) serving", worker), 5*time.Second)
	if pid, gen := r.ask(); pid != worker || gen != 1 {
		t.Errorf("answered by worker %d gen %d, want %d gen 1", pid, gen, worker)
	}
}

// Workers inherit none of what systemd passed to ss-bridge; their NOTIFY_SOCKET is a
// private one of ss-bridge's.
func TestWorkerEnvironment(t *testing.T) {
	r := newRig(t)
	r.appUnits("") // with WatchdogSec=30: ss-bridge gets WATCHDOG_USEC and WATCHDOG_PID
	r.systemctl("start", "app.service")
	main := r.mainPID("app.service")
	bridgeEnv := r.environ(main)
	for _, k := range []string{"NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC"} {
		if _, ok := bridgeEnv[k]; !ok {
			t.Errorf("systemd did not pass %s to ss-bridge; the test proves nothing about it", k)
		}
	}

	body, err := get(r.addr, "/env")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
		k, v, _ := strings.Cut(line, "=")
		env[k] = v
	}
	for _, k := range []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "LISTEN_PIDFDID",
		"WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE", "SS_BRIDGE_LISTEN_FDS_SHIM"} {
		if v, ok := env[k]; ok {
			t.Errorf("the worker inherited %s=%s", k, v)
		}
	}
	sock, ok := env["NOTIFY_SOCKET"]
	t.Logf("ss-bridge's NOTIFY_SOCKET %s; the worker's %s", bridgeEnv["NOTIFY_SOCKET"], sock)
	if ok {
		if sock == bridgeEnv["NOTIFY_SOCKET"] || sock == "/run/systemd/notify" {
			t.Errorf("the worker inherited systemd's NOTIFY_SOCKET=%s", sock)
		}
		if !regexp.MustCompile(`^/tmp/notify-[^/]+/[0-9a-f]{16}\.sock$`).MatchString(sock) {
			t.Errorf("the worker's NOTIFY_SOCKET=%s is not ss-bridge's private socket", sock)
		}
		// Enterable but not listable, and writable by a worker that changed its user:
		// the sender check by pid keeps others out.
		if got := r.exec("stat", "-c", "%a %F", filepath.Dir(sock), sock); got != "711 directory\n666 socket\n" {
			t.Errorf("stat of the worker's notify socket directory and socket: %q", got)
		}
	}
	if p := env["SERVER_STARTER_PORT"]; p != r.addr+"=3" {
		t.Errorf("SERVER_STARTER_PORT=%q, want %s=3", p, r.addr)
	}
	if g := env["SERVER_STARTER_GENERATION"]; g != "1" {
		t.Errorf("SERVER_STARTER_GENERATION=%q", g)
	}
}

// --listen-fds: a worker that speaks systemd socket activation gets the socket as
// LISTEN_FDS=1 with its own pid in LISTEN_PID, and serves.
func TestListenFDs(t *testing.T) {
	r := newRig(t)
	helper := install(t, r.c, "../../internal/systemdtest/testdata/sdhelper", "sdhelper")
	r.appUnits("@BRIDGE@ --port=@ADDR@ --listen-fds --ready=notify --ready-timeout=30 -- " + helper)
	r.systemctl("start", "app.service")
	main := r.mainPID("app.service")

	askLine := func() (int, string) {
		t.Helper()
		conn, err := net.DialTimeout("tcp", r.addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			r.dumpJournal()
			t.Fatalf("reading from %s: %v (got %q)", r.addr, err, line)
		}
		m := regexp.MustCompile(`^pid=(\d+) gen=1 fds=(\d+) names=(.*)\n$`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("answer %q", line)
		}
		if m[2] != "1" {
			t.Errorf("answer %q: LISTEN_FDS=%s, want 1", line, m[2])
		}
		if want := notify.EncodeFDName(r.addr); m[3] != want {
			t.Errorf("answer %q: LISTEN_FDNAMES=%s, want %s", line, m[3], want)
		}
		pid, _ := strconv.Atoi(m[1])
		return pid, line
	}
	pid, line := askLine()
	t.Logf("answer: %q", line)
	if pid == main {
		t.Fatalf("answered by ss-bridge itself (%d)", pid)
	}
	if p := r.ppid(pid); p != main {
		t.Errorf("worker %d is a child of %d, not of ss-bridge %d", pid, p, main)
	}
	env := r.environ(pid)
	if env["LISTEN_PID"] != strconv.Itoa(pid) || env["LISTEN_FDS"] != "1" {
		t.Errorf("worker %d has LISTEN_PID=%q LISTEN_FDS=%q", pid, env["LISTEN_PID"], env["LISTEN_FDS"])
	}
	if v, ok := env["SS_BRIDGE_LISTEN_FDS_SHIM"]; ok {
		t.Errorf("the worker has SS_BRIDGE_LISTEN_FDS_SHIM=%s", v)
	}
	if s := env["NOTIFY_SOCKET"]; s == "" || s == r.environ(main)["NOTIFY_SOCKET"] {
		t.Errorf("the worker's NOTIFY_SOCKET is %q", s)
	}
	// sdhelper's READY=1 (through the shim, from the worker's own pid) made the
	// generation start, and its STATUS= is part of ss-bridge's.
	r.waitProperty("app.service", "StatusText", fmt.Sprintf("generation 1 (pid %d) serving: generation 1", pid), 5*time.Second)

	r.systemctl("reload", "app.service")
	pid2, _ := askLine()
	if pid2 == pid {
		t.Errorf("after the reload still answered by %d", pid)
	}
	if env := r.environ(pid2); env["LISTEN_PID"] != strconv.Itoa(pid2) {
		t.Errorf("new worker %d has LISTEN_PID=%q", pid2, env["LISTEN_PID"])
	}
	r.waitProperty("app.service", "StatusText", fmt.Sprintf("generation 2 (pid %d) serving: generation 1", pid2), 5*time.Second)
}

// Every example unit passes systemd-analyze verify.
func TestUnitsVerify(t *testing.T) {
	c := systemdtest.Boot(t)
	bridge := install(t, c, "../../cmd/ss-bridge", "ss-bridge")
	files, err := filepath.Glob("*.s*")
	if err != nil {
		t.Fatal(err)
	}
	var units []string
	for _, f := range files {
		if strings.HasSuffix(f, ".service") || strings.HasSuffix(f, ".socket") {
			units = append(units, f)
		}
	}
	slices.Sort(units)
	if len(units) < 6 {
		t.Fatalf("only %v", units)
	}
	must := func(args ...string) {
		t.Helper()
		if _, err := c.Exec(args...); err != nil {
			t.Fatal(err)
		}
	}
	must("install", "-m", "0755", bridge, "/usr/local/bin/ss-bridge")
	must("sh", "-c", "printf '#!/bin/sh\\nexit 0\\n' >/usr/local/bin/app && chmod 0755 /usr/local/bin/app")
	must("mkdir", "-p", "/etc/ss-bridge", "/root/units")
	must("sh", "-c", "printf 'SS_BRIDGE_OPTIONS=--port=127.0.0.1:8080 --ready=notify\\nSS_BRIDGE_COMMAND=/usr/local/bin/app\\n' >/etc/ss-bridge/web.env")
	var paths []string
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		p := "/root/units/" + u
		if err := c.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(u, "@.service") {
			p = "/root/units/" + strings.Replace(u, "@.", "@web.", 1)
		}
		paths = append(paths, p)
	}
	for _, p := range paths {
		// Through sh, for stderr: systemd-analyze verify reports problems there, and
		// some of them do not change its exit status.
		out, err := c.Exec("sh", "-c", `cd /root/units && systemd-analyze verify "$1" 2>&1`, "sh", p)
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze verify %s: %v\n%s", p, err, out)
		} else {
			t.Logf("systemd-analyze verify %s: ok", p)
		}
	}
	// A verification that fails proves that the check can fail.
	if err := c.WriteFile("/root/units/broken.service", []byte("[Service]\nType=notify-reload\nExecStart=/usr/local/bin/missing\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Exec("sh", "-c", `systemd-analyze verify /root/units/broken.service 2>&1`); err == nil && strings.TrimSpace(out) == "" {
		t.Errorf("systemd-analyze verify accepts a unit whose ExecStart= does not exist")
	}
}

// The unit for systemd < 253 (Type=notify, ExecReload= running ss-bridge --restart):
// systemctl reload returns once the new generation serves and the old one has exited.
func TestLegacyReload(t *testing.T) {
	r := newRig(t)
	r.installUnits(map[string]string{
		"app-legacy.socket":  r.unit("app-legacy.socket", ""),
		"app-legacy.service": r.unit("app-legacy.service", ""),
	})
	const unit = "app-legacy.service"
	r.systemctl("start", unit)
	old, gen := r.ask()
	if gen != 1 {
		t.Fatalf("gen %d", gen)
	}
	r.waitProperty(unit, "StatusText", fmt.Sprintf("generation 1 (pid %d) serving", old), 5*time.Second)

	for i := 2; i <= 3; i++ {
		start := time.Now()
		r.systemctl("reload", unit)
		took := time.Since(start)
		pid, gen := r.ask()
		t.Logf("systemctl reload took %v; then answered by worker %d gen %d", took.Round(time.Millisecond), pid, gen)
		if gen != i || pid == old {
			t.Errorf("right after the reload answered by worker %d gen %d, want gen %d", pid, gen, i)
		}
		// ss-bridge --restart waits until the status file lists only the new generation.
		if r.alive(old) {
			t.Errorf("the old worker %d is alive after the reload", old)
		}
		if got, want := r.exec("cat", "/run/app/ss-bridge.status"), fmt.Sprintf("%d:%d\n", i, pid); got != want {
			t.Errorf("status file %q, want %q", got, want)
		}
		if s := r.property(unit, "ActiveState"); s != "active" {
			t.Errorf("ActiveState after the reload: %s", s)
		}
		r.waitProperty(unit, "StatusText", fmt.Sprintf("generation %d (pid %d) serving", i, pid), 5*time.Second)
		old = pid
	}
}

// ss-bridge pings systemd's watchdog while its loop is healthy: with WatchdogSec=1 the
// unit stays up, where a silent service would be killed after a second.
func TestWatchdogKeepsTheUnitAlive(t *testing.T) {
	r := newRig(t)
	r.appUnits("")
	r.installUnits(map[string]string{"app.service.d/watchdog.conf": "[Service]\nWatchdogSec=1\n"})
	r.systemctl("start", "app.service")
	main := r.mainPID("app.service")
	time.Sleep(3500 * time.Millisecond)
	if s := r.property("app.service", "ActiveState"); s != "active" || r.mainPID("app.service") != main {
		r.dumpJournal()
		t.Fatalf("after 3.5 s with WatchdogSec=1: %s, main pid %d (was %d)", s, r.mainPID("app.service"), main)
	}
	if n := r.property("app.service", "NRestarts"); n != "0" {
		t.Errorf("NRestarts = %s", n)
	}
	if j := r.journal("app.service"); strings.Contains(j, "Watchdog timeout") {
		t.Errorf("journal:\n%s", j)
	}
}

// A worker slower to start than TimeoutStartSec= does not fail the start: ss-bridge
// extends the timeout (EXTEND_TIMEOUT_USEC) while it waits for the worker's READY=1.
func TestSlowStartExtendsTheTimeout(t *testing.T) {
	r := newRig(t)
	r.appUnits("@BRIDGE@ --port=@ADDR@ --ready=notify --ready-timeout=10 -- @APP@ -start-delay=2500ms")
	r.installUnits(map[string]string{"app.service.d/timeout.conf": "[Service]\nTimeoutStartSec=1\n"})
	start := time.Now()
	r.systemctl("start", "app.service")
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("start returned after %v, before the worker could be ready", took)
	}
	if s := r.property("app.service", "ActiveState"); s != "active" {
		r.dumpJournal()
		t.Fatalf("ActiveState %s", s)
	}
	if _, gen := r.ask(); gen != 1 {
		t.Errorf("answered by gen %d", gen)
	}
}

// A socket ss-bridge stored in the fd store that its options no longer ask for is
// removed from the store (FDSTOREREMOVE=1) and closed, not passed to the workers.
func TestFDStoreDropsSocketsNoLongerRequested(t *testing.T) {
	r := newRig(t)
	const unit = "app-fdstore.service"
	r.installUnits(map[string]string{unit: r.unit("app-fdstore.service", "")})
	r.systemctl("start", unit)
	if n := r.property(unit, "NFileDescriptorStore"); n != "1" {
		t.Fatalf("NFileDescriptorStore = %s, want 1", n)
	}
	oldAddr := r.addr
	r.addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	r.installUnits(map[string]string{unit: r.unit("app-fdstore.service", "@BRIDGE@ --port=@ADDR@ --ready=notify -- @APP@")})
	r.systemctl("restart", unit)
	if n := r.property(unit, "NFileDescriptorStore"); n != "1" {
		r.dumpJournal()
		t.Fatalf("NFileDescriptorStore = %s after moving to %s, want 1 (the new socket only)", n, r.addr)
	}
	worker, _ := r.ask()
	if p := r.environ(worker)["SERVER_STARTER_PORT"]; p != r.addr+"=3" {
		t.Errorf("SERVER_STARTER_PORT=%q, want only %s", p, r.addr)
	}
	if conn, err := net.DialTimeout("tcp", oldAddr, time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still accepts connections", oldAddr)
	}
	if j := r.journal(unit); strings.Contains(j, "failed to remove") {
		t.Errorf("journal:\n%s", j)
	}
}

// A worker whose STATUS= is near the 4096 bytes of a notification does not cost the unit
// its READY=1: ss-bridge cuts the text and sends state changes alone, so the start and a
// reload complete (with the text in the READY=1 datagram, systemd would ignore it, and the
// start would hang until its timeout).
func TestLongWorkerStatusKeepsReady(t *testing.T) {
	r := newRig(t)
	r.appUnits("@BRIDGE@ --port=@ADDR@ --ready=notify --ready-timeout=3 -- @APP@ -status-len=4080")
	r.installUnits(map[string]string{"app.service.d/timeout.conf": "[Service]\nTimeoutStartSec=5\n"})
	r.systemctl("start", "app.service")
	if s := r.property("app.service", "ActiveState"); s != "active" {
		r.dumpJournal()
		t.Fatalf("ActiveState %s", s)
	}
	r.systemctl("reload", "app.service")
	if _, gen := r.ask(); gen != 2 {
		t.Errorf("after the reload, answered by gen %d", gen)
	}
	s := r.property("app.service", "StatusText")
	if len(s) > notify.MaxStatusLen || !strings.HasSuffix(s, "s...") {
		t.Errorf("StatusText of %d bytes: %.80q", len(s), s)
	}
}
