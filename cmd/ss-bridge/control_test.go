package main

// The control socket (PIDFILE.ctl): ss-bridge status and scale ask the running server
// through it. Real binary, real workers, real peer credentials.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/proc"
	"github.com/ss-bridge/ss-bridge/service"
	"github.com/ss-bridge/ss-bridge/supervisor"
)

// live asks the control socket at path for the server's view.
func live(t testing.TB, path string) supervisor.View {
	t.Helper()
	r, err := service.AskControl(path, service.ControlRequest{Command: "status"}, 10*time.Second)
	if err != nil {
		t.Fatalf("status through %s: %v", path, err)
	}
	return *r.View
}

// waitLive polls the control socket until ok(view) holds.
func waitLive(t testing.TB, path string, timeout time.Duration, what string, ok func(supervisor.View) bool) supervisor.View {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last supervisor.View
	var lastErr error
	for time.Now().Before(deadline) {
		r, err := service.AskControl(path, service.ControlRequest{Command: "status"}, 10*time.Second)
		if lastErr = err; err == nil {
			if last = *r.View; ok(last) {
				return last
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not within %v; last view %+v, error %v", what, timeout, last, lastErr)
	return last
}

// statusReport is the part of `ss-bridge status --json` these tests read.
type statusReport struct {
	Running     bool             `json:"running"`
	PID         int              `json:"pid"`
	Generations []genPidJSON     `json:"generations"`
	Live        *supervisor.View `json:"live"`
}

type genPidJSON struct {
	Generation int `json:"generation"`
	PID        int `json:"pid"`
}

func statusJSON(t testing.TB, pidFile string) (statusReport, runResult) {
	t.Helper()
	res := runBridgeCmd(t, 30*time.Second, nil, "status", "--pid-file="+pidFile, "--json")
	var r statusReport
	if err := json.Unmarshal([]byte(res.stdout), &r); err != nil {
		t.Fatalf("status --json: exit %d, %v: %q, stderr %q", res.code, err, res.stdout, res.stderr)
	}
	return r, res
}

// Scaling a pool from 1 to 8 and back to 1 with `ss-bridge scale` under HTTP load: no
// request fails, and each scale returns once exactly that many workers serve.
func TestControlScaleUnderLoad(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	pidFile, status := filepath.Join(dir, "pid"), filepath.Join(dir, "status")
	ctl := pidFile + ".ctl"
	b := startBridge(t, cmdArgs([]string{"--port=" + addr, "--workers=1", "--interval=0.3",
		"--pid-file=" + pidFile, "--status-file=" + status}, goWorker())...)
	waitPool(t, status, 1, 1, 10*time.Second)
	load := loadOn(addr, 4)
	for _, n := range []int{8, 1} {
		res := runBridgeCmd(t, 60*time.Second, nil, "scale", "--pid-file="+pidFile, "--timeout=30", fmt.Sprint(n))
		want := fmt.Sprintf("%d workers serving\n", n)
		if n == 1 {
			want = "1 worker serving\n"
		}
		if res.code != 0 || res.stdout != want {
			t.Fatalf("scale %d: exit %d, stdout %q, stderr %q", n, res.code, res.stdout, res.stderr)
		}
		t.Logf("scale %d took %v", n, res.took.Round(time.Millisecond))
		// Reached when the command returned, not later.
		v := live(t, ctl)
		serving := map[int]bool{}
		for _, p := range v.Processes {
			if p.State == "serving" {
				serving[p.Slot] = true
			}
		}
		if v.Workers != n || v.Serving != n || len(serving) != n {
			t.Errorf("after scale %d: %d slots, %d serving (%v): %s", n, v.Workers, v.Serving, serving, v.Summary)
		}
		if got := b.count(fmt.Sprintf(`^workers set to %d$`, n)); got != 1 {
			t.Errorf("%d lines \"workers set to %d\"", got, n)
		}
	}
	time.Sleep(300 * time.Millisecond)
	load.Finish(t, "scaling 1 -> 8 -> 1")
	waitPool(t, status, 1, 1, 10*time.Second)
	deadline := time.Now().Add(10 * time.Second)
	for len(proc.Children(b.pid)) != 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := len(proc.Children(b.pid)); n != 1 {
		t.Errorf("%d workers after scaling down to 1", n)
	}
}

// scale needs a pool, a running server and a count: each mistake is one line and exit 1.
func TestControlScaleErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	pidFile := filepath.Join(dir, "pid")
	b := startBridge(t, cmdArgs([]string{"--port=" + addr, "--interval=0.1", "--pid-file=" + pidFile}, goWorker())...)
	b.worker(1, 10*time.Second)
	waitLive(t, pidFile+".ctl", 10*time.Second, "single worker serving", func(v supervisor.View) bool { return v.Serving == 1 })
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--pid-file=" + pidFile, "3"}, "ss-bridge: scale: the server runs a single worker: scaling needs --workers\n"},
		{[]string{"--pid-file=" + pidFile, "0"}, "ss-bridge: scale: \"0\" is not a number of workers from 1 to 1024\n"},
		{[]string{"--pid-file=" + pidFile}, "ss-bridge: scale: give --pid-file=FILE N, or UNIT N\n"},
		{[]string{"--pid-file=" + filepath.Join(dir, "nothing"), "2"}, "ss-bridge: scale: open pid file: open " + filepath.Join(dir, "nothing") + ": no such file or directory\n"},
	} {
		res := runBridgeCmd(t, 30*time.Second, nil, append([]string{"scale"}, tc.args...)...)
		if res.code != 1 || res.stderr != tc.want || res.stdout != "" {
			t.Errorf("scale %q: exit %d, stderr %q (want %q), stdout %q", tc.args, res.code, res.stderr, tc.want, res.stdout)
		}
	}
	if n := len(proc.Children(b.pid)); n != 1 {
		t.Errorf("%d workers after the refused scale, want 1", n)
	}
}

// status --json reads the live state: every worker with its slot, pid, start time and
// last STATUS=, and the last reload's outcome after a good and after a failed reload.
func TestControlStatusLive(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	envdir := makeEnvdir(t, dir)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	pidFile, status := filepath.Join(dir, "pid"), filepath.Join(dir, "status")
	ctl := pidFile + ".ctl"
	worker := []string{"sh", "-c", `[ "$BUILD" = bad ] && exit 3; exec "$0" -status-len=40 -ready`, e2eWorkerBin}
	b := startBridge(t, cmdArgs([]string{"--port=" + addr, "--workers=2", "--ready=notify", "--ready-timeout=10",
		"--envdir=" + envdir, "--pid-file=" + pidFile, "--status-file=" + status}, worker)...)
	began := time.Now()
	pids := waitPool(t, status, 2, 1, 10*time.Second)
	waitLive(t, ctl, 10*time.Second, "both workers' STATUS=", func(v supervisor.View) bool {
		return len(v.Processes) == 2 && v.Processes[0].Status != "" && v.Processes[1].Status != ""
	})

	r, res := statusJSON(t, pidFile)
	if res.code != 0 || !r.Running || r.PID != b.pid || r.Live == nil {
		t.Fatalf("status: exit %d, %+v, stderr %q", res.code, r, res.stderr)
	}
	v := r.Live
	if v.Workers != 2 || v.Serving != 2 || v.Generation != 1 || !v.Ready || v.LastReload != nil || v.Summary != "generation 1: 2/2 serving" {
		t.Errorf("live view %+v", v)
	}
	slots := map[int]int{}
	for _, p := range v.Processes {
		slots[p.Slot] = p.PID
		if p.State != "serving" || p.Generation != 1 || !strings.HasPrefix(p.Status, fmt.Sprintf("pid %d: sss", p.PID)) ||
			p.Started.Before(began.Add(-time.Second)) || p.Started.After(time.Now()) {
			t.Errorf("worker %+v", p)
		}
		if got := slotOf(t, p.PID); got != fmt.Sprint(p.Slot) {
			t.Errorf("worker %d: view says slot %d, its environment %s", p.PID, p.Slot, got)
		}
	}
	if len(slots) != 2 || fmt.Sprint(sortedInts(slots[0], slots[1])) != fmt.Sprint(sortedInts(pids...)) {
		t.Errorf("view's workers by slot %v, status file's %v", slots, pids)
	}

	hup := time.Now()
	b.signal(syscall.SIGHUP)
	v2 := waitLive(t, ctl, 20*time.Second, "the reload ends", func(v supervisor.View) bool {
		return v.LastReload != nil && v.LastReload.Outcome != supervisor.ReloadInProgress
	})
	if lr := v2.LastReload; lr.Outcome != "ok" || lr.Generation != 2 || lr.Error != "" ||
		lr.Started.Before(hup.Add(-time.Second)) || lr.Ended.Before(lr.Started) {
		t.Errorf("after a good reload: %+v", lr)
	}

	setBuild(t, envdir, "bad")
	b.signal(syscall.SIGHUP)
	v3 := waitLive(t, ctl, 20*time.Second, "the failed reload ends", func(v supervisor.View) bool {
		return v.LastReload != nil && v.LastReload.Generation != 2 && v.LastReload.Outcome != supervisor.ReloadInProgress
	})
	if lr := v3.LastReload; lr.Outcome != "failed" || lr.Generation != 3 || !strings.Contains(lr.Error, "exited with status 768 before it was ready") {
		t.Errorf("after a failed reload: %+v", lr)
	}
	if v3.Serving != 2 || !strings.HasPrefix(v3.Summary, "generation 2: 2/2 serving") {
		t.Errorf("after a failed reload: %d serving, %q", v3.Serving, v3.Summary)
	}
	text := runBridgeCmd(t, 30*time.Second, nil, "status", "--pid-file="+pidFile)
	if text.code != 0 || !strings.Contains(text.stdout, "last reload: failed, started ") ||
		!strings.Contains(text.stdout, "workers: 2/2 serving") || !regexpFind(`(?m)^generation 2: pid \d+\n  slot 1, serving since \S+: pid \d+: s+$`, text.stdout) {
		t.Errorf("status: exit %d:\n%s%s", text.code, text.stdout, text.stderr)
	}
}

func sortedInts(v ...int) []int {
	out := append([]int(nil), v...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func regexpFind(pattern, s string) bool { return re(pattern).MatchString(s) }

// perlClient sends one request to a control socket and prints the reply: a client that
// is not ss-bridge, run as another user.
const perlClient = `use IO::Socket::UNIX;
$SIG{PIPE} = "IGNORE"; # a refusal may come before the request is sent
my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n";
print $s $ARGV[1], "\n";
local $/;
my $r = <$s>;
print $r;`

// A peer of another uid is refused by its credentials (SO_PEERCRED), even when the
// socket file's mode would let it connect; the socket's mode 0600 refuses it first.
func TestControlRefusesAnotherUID(t *testing.T) {
	t.Parallel()
	if os.Getuid() != 0 {
		t.Skip("needs root, to run the client as nobody")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv is missing")
	}
	dir, err := os.MkdirTemp("", "ss-bridge-ctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	pidFile := filepath.Join(dir, "pid")
	ctl := pidFile + ".ctl"
	b := startBridge(t, cmdArgs([]string{"--port=" + addr, "--workers=2", "--interval=0.1", "--pid-file=" + pidFile}, goWorker())...)
	waitLive(t, ctl, 10*time.Second, "2 serving", func(v supervisor.View) bool { return v.Serving == 2 })
	st, err := os.Lstat(ctl)
	if err != nil || st.Mode() != os.ModeSocket|0o600 {
		t.Fatalf("control socket %s: %v, mode %v, want a socket of mode 0600", ctl, err, st.Mode())
	}
	ask := func(asNobody bool, req string) (string, error) {
		args := []string{"perl", "-e", perlClient, ctl, req}
		if asNobody {
			args = append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}, args...)
		}
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		return string(out), err
	}
	if out, err := ask(true, `{"command":"status"}`); err == nil || !strings.Contains(out, "connect: Permission denied") {
		t.Errorf("nobody through a socket of mode 0600: %v, %q", err, out)
	}
	if err := os.Chmod(ctl, 0o666); err != nil {
		t.Fatal(err)
	}
	const refused = `{"ok":false,"error":"permission denied: uid 65534 may not control a server of uid 0"}` + "\n"
	for _, req := range []string{`{"command":"status"}`, `{"command":"scale","workers":5}`} {
		if out, err := ask(true, req); err != nil || out != refused {
			t.Errorf("nobody asks %s: %v, %q, want %q", req, err, out, refused)
		}
	}
	// The same client as root is served: the refusal is the uid's.
	if out, err := ask(false, `{"command":"status"}`); err != nil || !strings.HasPrefix(out, `{"ok":true,"pid":`+fmt.Sprint(b.pid)) {
		t.Errorf("root asks status: %v, %q", err, out)
	}
	if v := live(t, ctl); v.Workers != 2 {
		t.Errorf("%d workers after nobody asked for 5", v.Workers)
	}
}

// A client that connects and sends nothing holds up no other request, and is cut off
// after service.ControlTimeout; the bridge then holds no descriptor for it.
func TestControlSilentClientBlocksNothing(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	pidFile := filepath.Join(dir, "pid")
	ctl := pidFile + ".ctl"
	b := startBridge(t, cmdArgs([]string{"--port=" + addr, "--workers=2", "--interval=0.1", "--pid-file=" + pidFile}, goWorker())...)
	waitLive(t, ctl, 10*time.Second, "2 serving", func(v supervisor.View) bool { return v.Serving == 2 })
	time.Sleep(200 * time.Millisecond) // for the last poll's connection to be closed
	fds := proc.FDCount(b.pid)
	silent, err := net.Dial("unix", ctl)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	r, res := statusJSON(t, pidFile)
	if res.code != 0 || r.Live == nil || r.Live.Serving != 2 {
		t.Errorf("status beside a silent client: exit %d, %+v, stderr %q", res.code, r, res.stderr)
	}
	if took := time.Since(start); took > service.ControlTimeout/2 {
		t.Errorf("status beside a silent client took %v", took)
	}
	res = runBridgeCmd(t, 30*time.Second, nil, "scale", "--pid-file="+pidFile, "3")
	if res.code != 0 {
		t.Errorf("scale beside a silent client: exit %d, %s", res.code, res.stderr)
	}
	silent.SetReadDeadline(time.Now().Add(service.ControlTimeout + 10*time.Second))
	reply, err := io.ReadAll(silent)
	cut := time.Since(start)
	if err != nil || cut < service.ControlTimeout-time.Second || cut > service.ControlTimeout+5*time.Second {
		t.Errorf("silent client: %v after %v, read %q", err, cut, reply)
	}
	deadline := time.Now().Add(5 * time.Second)
	for proc.FDCount(b.pid) > fds && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if now := proc.FDCount(b.pid); now > fds {
		t.Errorf("the bridge has %d descriptors open, %d before the silent client", now, fds)
	}
}

// The control socket carries on across a self-upgrade: the same socket file, and the new
// program serves it, with the record of the last reload.
func TestControlSurvivesUpgrade(t *testing.T) {
	bins := upgradeBins(t)
	s := startUpgradeServer(t, []string{"--workers=2"})
	ctl := s.pidFile + ".ctl"
	waitPool(t, s.statusFile, 2, 1, 10*time.Second)
	s.signal(syscall.SIGHUP)
	before := waitLive(t, ctl, 20*time.Second, "the reload ends", func(v supervisor.View) bool {
		return v.LastReload != nil && v.LastReload.Outcome == "ok" && v.Serving == 2
	})
	var st1 syscall.Stat_t
	if err := syscall.Lstat(ctl, &st1); err != nil {
		t.Fatal(err)
	}
	install(t, bins[1], s.exe, 0o755)
	mustUpgrade(t, s.pidFile, s.pid, versionA, versionB)

	r, res := statusJSON(t, s.pidFile)
	if res.code != 0 || r.Live == nil {
		t.Fatalf("status after the upgrade: exit %d, %+v, stderr %q", res.code, r, res.stderr)
	}
	if lr := r.Live.LastReload; lr == nil || *lr != *before.LastReload {
		t.Errorf("last reload after the upgrade %+v, before %+v", lr, before.LastReload)
	}
	var st2 syscall.Stat_t
	if err := syscall.Lstat(ctl, &st2); err != nil || st2.Ino != st1.Ino {
		t.Errorf("control socket after the upgrade: %v, inode %d, before %d", err, st2.Ino, st1.Ino)
	}
	reply, err := service.AskControl(ctl, service.ControlRequest{Command: "status"}, 10*time.Second)
	if err != nil || reply.Version != versionB || reply.PID != s.pid {
		t.Errorf("served by %+v, %v; want version %s, pid %d", reply, err, versionB, s.pid)
	}
	if res := runBridgeCmd(t, 60*time.Second, nil, "scale", "--pid-file="+s.pidFile, "3"); res.code != 0 {
		t.Errorf("scale after the upgrade: exit %d, %s", res.code, res.stderr)
	}
	s.signal(syscall.SIGTERM)
	if code := s.wait(10 * time.Second); code != 0 {
		t.Errorf("exit status %d after TERM", code)
	}
	if fileExists(ctl) {
		t.Errorf("%s left behind", ctl)
	}
}

// The socket file is removed at exit; one left by a server killed with SIGKILL is stale
// and replaced by the next start; one in use, and a symlink, make the start fail with
// one line and leave them as they were.
func TestControlSocketFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	pidFile := filepath.Join(dir, "pid")
	ctl := pidFile + ".ctl"
	args := cmdArgs([]string{"--port=" + addr, "--interval=0.1", "--pid-file=" + pidFile}, goWorker())
	b := startBridge(t, args...)
	b.worker(1, 10*time.Second)
	waitLive(t, ctl, 10*time.Second, "serving", func(v supervisor.View) bool { return v.Serving == 1 })
	b.signal(syscall.SIGTERM)
	if code := b.wait(10 * time.Second); code != 0 {
		t.Fatalf("exit %d after TERM", code)
	}
	if fileExists(ctl) {
		t.Errorf("%s left after TERM", ctl)
	}

	b = startBridge(t, args...)
	w := b.worker(1, 10*time.Second)
	waitLive(t, ctl, 10*time.Second, "serving", func(v supervisor.View) bool { return v.Serving == 1 })
	syscall.Kill(b.pid, syscall.SIGKILL)
	b.wait(10 * time.Second)
	proc.WaitDead(w, 10*time.Second)
	if !fileExists(ctl) {
		t.Fatalf("%s is not left by a SIGKILLed server", ctl)
	}
	b = startBridge(t, args...)
	b.waitLine(10*time.Second, `^removing existing socket file:`+regexp.QuoteMeta(ctl)+`$`, 1)
	b.worker(1, 10*time.Second)
	if v := waitLive(t, ctl, 10*time.Second, "serving", func(v supervisor.View) bool { return v.Serving == 1 }); v.Generation != 1 {
		t.Errorf("generation %d", v.Generation)
	}
	b.signal(syscall.SIGTERM)
	b.wait(10 * time.Second)

	ln, err := net.Listen("unix", ctl)
	if err != nil {
		t.Fatal(err)
	}
	res := runBridgeCmd(t, 30*time.Second, nil, args...)
	want := fmt.Sprintf("ss-bridge: control socket: listen on %s: %s is in use: another process listens on it\n", ctl, ctl)
	if res.code != 1 || res.stderr != want {
		t.Errorf("start beside a live socket: exit %d, stderr %q, want %q", res.code, res.stderr, want)
	}
	if fileExists(pidFile) || !fileExists(ctl) {
		t.Errorf("after the failed start: pid file there %v, live socket there %v", fileExists(pidFile), fileExists(ctl))
	}
	ln.Close()

	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("keep\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(ctl)
	if err := os.Symlink(target, ctl); err != nil {
		t.Fatal(err)
	}
	res = runBridgeCmd(t, 30*time.Second, nil, args...)
	want = fmt.Sprintf("ss-bridge: control socket: listen on %s: a symbolic link exists and is not a socket; not removing it\n", ctl)
	if res.code != 1 || res.stderr != want {
		t.Errorf("start with a symlink at the socket: exit %d, stderr %q, want %q", res.code, res.stderr, want)
	}
	if data, err := os.ReadFile(target); err != nil || string(data) != "keep\n" {
		t.Errorf("the symlink's target: %q, %v", data, err)
	}
	if st, err := os.Lstat(ctl); err != nil || st.Mode()&os.ModeSymlink == 0 {
		t.Errorf("the symlink is gone: %v", err)
	}
}
