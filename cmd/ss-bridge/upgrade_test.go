package main

// Self-upgrade (SIGUSR2, ss-bridge upgrade): the real binary, built twice with different
// versions, replaced on disk and executed in place while real workers serve real load.

import (
	"fmt"
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
)

var (
	upgradeBuild    sync.Once
	upgradeBinaries [2]string // ss-bridge built as versionA and versionB
	upgradeBuildErr error
)

const (
	versionA = "9.0.0-upgrade-a"
	versionB = "9.0.0-upgrade-b"
)

// upgradeBins builds ss-bridge twice, with versionA and versionB.
func upgradeBins(t *testing.T) [2]string {
	t.Helper()
	if os.Getenv("SS_BRIDGE_TEST_BIN") != "" {
		t.Skip("self-upgrade is ss-bridge's own; SS_BRIDGE_TEST_BIN is set")
	}
	upgradeBuild.Do(func() {
		for i, v := range []string{versionA, versionB} {
			out := filepath.Join(e2eBinDir, "ss-bridge-"+v)
			flags := append(testkit.RaceFlags(), "-ldflags=-X github.com/ss-bridge/ss-bridge/cli.version="+v)
			if err := e2eGoBuild("../../cmd/ss-bridge", out, flags...); err != nil {
				upgradeBuildErr = err
				return
			}
			upgradeBinaries[i] = out
		}
	})
	if upgradeBuildErr != nil {
		t.Fatal(upgradeBuildErr)
	}
	return upgradeBinaries
}

// install puts a copy of src at dst by rename, as a package manager does: the running
// program keeps its (now deleted) file, and dst names the new one.
func install(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	installBytes(t, data, dst, mode)
}

func installBytes(t *testing.T, data []byte, dst string, mode os.FileMode) {
	t.Helper()
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		t.Fatal(err)
	}
}

// upgradeCmd runs `ss-bridge upgrade --pid-file=pidFile`.
func upgradeCmd(t *testing.T, pidFile string, extra ...string) runResult {
	t.Helper()
	return runBridgeCmd(t, 60*time.Second, nil, append([]string{"upgrade", "--pid-file=" + pidFile}, extra...)...)
}

// mustUpgrade runs upgrade and checks it reports from -> to.
func mustUpgrade(t *testing.T, pidFile string, pid int, from, to string) {
	t.Helper()
	res := upgradeCmd(t, pidFile)
	want := fmt.Sprintf("upgraded ss-bridge from %s to %s (pid %d unchanged)\n", from, to, pid)
	if res.code != 0 || res.stdout != want {
		t.Fatalf("upgrade %s -> %s: exit %d, stdout %q (want %q), stderr %q", from, to, res.code, res.stdout, want, res.stderr)
	}
}

// upgradeServer is a bridge run from a copy of the binary in its own directory, which the
// tests replace.
type upgradeServer struct {
	*bridge
	exe, pidFile, statusFile, addr string
}

func startUpgradeServer(t *testing.T, extraOpts []string, worker ...string) *upgradeServer {
	t.Helper()
	bins := upgradeBins(t)
	dir := t.TempDir()
	s := &upgradeServer{exe: filepath.Join(dir, "ss-bridge"), pidFile: filepath.Join(dir, "pid"),
		statusFile: filepath.Join(dir, "status"), addr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	install(t, bins[0], s.exe, 0o755)
	if len(worker) == 0 {
		worker = goWorker()
	}
	opts := append([]string{"--port=" + s.addr, "--pid-file=" + s.pidFile, "--status-file=" + s.statusFile, "--interval=0.5"}, extraOpts...)
	s.bridge = startBridgeWith(t, bridgeConfig{bin: s.exe}, cmdArgs(opts, worker)...)
	return s
}

// httpLoad starts clients of both kinds, a new connection per request and keep-alive.
func httpLoad(addr string) *testkit.Load {
	clients := make([]*http.Client, 4)
	for i := range clients {
		clients[i] = newClient(nil, i%2 == 1, 5*time.Second)
	}
	return testkit.StartLoad(len(clients), 2*time.Millisecond, func(i int) (int, error) {
		_, gen, err := testkit.Ask(clients[i], "http://"+addr+"/")
		return gen, err
	})
}

func TestUpgradeUnderLoadKeepsEverything(t *testing.T) {
	bins := upgradeBins(t)
	s := startUpgradeServer(t, nil)
	w := s.worker(1, 10*time.Second)
	waitServing(t, s.addr, 1, 10*time.Second)
	waitStatus(t, s.statusFile, statusLine(1, w), 5*time.Second)

	load := httpLoad(s.addr)
	// Not one descriptor more than before: everything passed across an exec is
	// either adopted or closed.
	fds := proc.FDCount(s.pid)
	const upgrades = 20
	for i := range upgrades {
		from, to := versionA, versionB
		if i%2 == 1 {
			from, to = versionB, versionA
		}
		install(t, bins[(i+1)%2], s.exe, 0o755)
		mustUpgrade(t, s.pidFile, s.pid, from, to)
		time.Sleep(50 * time.Millisecond)
	}
	load.Finish(t, fmt.Sprintf("%d upgrades", upgrades))

	if s.exited() {
		t.Fatalf("the bridge exited")
	}
	if n := s.count(`^upgraded from .* \(pid ` + strconv.Itoa(s.pid) + ` unchanged\)$`); n != upgrades {
		t.Errorf("%d \"upgraded from\" lines, want %d", n, upgrades)
	}
	if got := s.workerPids(); len(got) != 1 || got[0] != w {
		t.Errorf("workers after the upgrades: %v, want [%d]", got, w)
	}
	if n := s.count(`^starting new worker`); n != 1 {
		t.Errorf("%d workers were started, want 1", n)
	}
	if data, _ := os.ReadFile(s.statusFile); string(data) != statusLine(1, w) {
		t.Errorf("status file %q, want %q", data, statusLine(1, w))
	}
	if data, _ := os.ReadFile(s.pidFile); string(data) != fmt.Sprintf("%d\n", s.pid) {
		t.Errorf("pid file %q, want the bridge's pid %d", data, s.pid)
	}
	if now := proc.FDCount(s.pid); now != fds {
		t.Errorf("the bridge has %d descriptors open after %d upgrades, %d before", now, upgrades, fds)
	}
	if p := proc.Parent(w); p != s.pid {
		t.Errorf("worker %d's parent is %d, not the bridge %d", w, p, s.pid)
	}

	// The new image supervises as the old one did.
	s.signal(syscall.SIGHUP)
	w2 := waitServing(t, s.addr, 2, 10*time.Second)
	waitStatus(t, s.statusFile, statusLine(2, w2), 10*time.Second)
	if !proc.WaitDead(w, 10*time.Second) {
		t.Errorf("old worker %d still alive after the restart", w)
	}
	s.signal(syscall.SIGTERM)
	if code := s.wait(10 * time.Second); code != 0 {
		t.Errorf("exit status %d after TERM, want 0", code)
	}
	for _, f := range []string{s.pidFile, s.statusFile, s.pidFile + ".upgrade"} {
		if fileExists(f) {
			t.Errorf("%s left behind", f)
		}
	}
	if proc.Alive(w2) {
		t.Errorf("worker %d alive after the bridge exited", w2)
	}
}

func TestUpgradeRefusesABadCandidate(t *testing.T) {
	bins := upgradeBins(t)
	good, err := os.ReadFile(bins[1])
	if err != nil {
		t.Fatal(err)
	}
	s := startUpgradeServer(t, nil)
	w := s.worker(1, 10*time.Second)
	waitServing(t, s.addr, 1, 10*time.Second)
	for _, c := range []struct {
		name   string
		data   []byte
		mode   os.FileMode
		reason string
	}{
		{"not-executable", good, 0o644, "permission denied"},
		{"truncated", good[:len(good)/3], 0o755, "preflight of " + s.exe + ": "},
		{"exits-1", []byte("#!/bin/sh\necho 'error: I cannot'\nexit 1\n"), 0o755, "preflight of " + s.exe + ": error: I cannot"},
		{"hangs", []byte("#!/bin/sh\nexec sleep 60\n"), 0o755, "no answer within 10s"},
		{"missing", nil, 0, "no such file or directory"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.data == nil {
				os.Remove(s.exe)
			} else {
				installBytes(t, c.data, s.exe, c.mode)
			}
			res := upgradeCmd(t, s.pidFile)
			if res.code != 1 || !strings.Contains(res.stderr, c.reason) || !strings.Contains(res.stderr, "ss-bridge "+versionA+" (pid "+strconv.Itoa(s.pid)+") carries on") ||
				strings.Count(res.stderr, "\n") != 1 {
				t.Errorf("upgrade: exit %d, stderr %q; want exit 1 and one line saying %q", res.code, res.stderr, c.reason)
			}
			s.waitLine(5*time.Second, `^upgrade failed: .*`+regexpQuote(c.reason), 1)
			if s.exited() {
				t.Fatalf("the bridge exited")
			}
			if pid, gen, err := getPidGen(s.addr); err != nil || pid != w || gen != 1 {
				t.Errorf("after the refusal: worker %d gen %d err %v, want %d gen 1", pid, gen, err, w)
			}
		})
	}
	// Nothing was left: no zombie, no preflight child, and a good candidate still works.
	for _, st := range proc.Children(s.pid) {
		if st.PID != w {
			t.Errorf("the bridge has a child %d (state %c) besides its worker", st.PID, st.State)
		}
	}
	install(t, bins[1], s.exe, 0o755)
	mustUpgrade(t, s.pidFile, s.pid, versionA, versionB)
	if got := s.workerPids(); len(got) != 1 || got[0] != w {
		t.Errorf("workers: %v, want [%d]", got, w)
	}
}

// slowCandidate installs a wrapper script that takes a second to answer the preflight
// and then runs bin: the window in which a signal arrives "during the upgrade". onExec is
// shell run in the exec itself, after the old image is gone and before the new one runs.
func slowCandidate(t *testing.T, exe, bin, onExec string) {
	t.Helper()
	script := fmt.Sprintf("#!/bin/sh\nif [ -n \"$SS_BRIDGE_PREFLIGHT\" ]; then sleep 1; else %s; fi\nexec %s \"$@\"\n", onExec, bin)
	installBytes(t, []byte(script), exe, 0o755)
}

// A HUP during the preflight starts a restart that the exec interrupts: the new image
// carries it on (the new worker counts as started 3 s after its start, well after the
// exec), and it is the one restart the HUP asked for.
func TestUpgradeHUPDuringTheUpgradeRestartsOnce(t *testing.T) {
	bins := upgradeBins(t)
	s := startUpgradeServer(t, []string{"--interval=3"})
	w := s.worker(1, 10*time.Second)
	waitServing(t, s.addr, 1, 10*time.Second)
	waitStatus(t, s.statusFile, statusLine(1, w), 10*time.Second)
	slowCandidate(t, s.exe, bins[1], ":")
	load := httpLoad(s.addr)
	done := make(chan runResult)
	go func() { done <- upgradeCmd(t, s.pidFile) }()
	s.waitLine(5*time.Second, `^received USR2`, 1)
	s.signal(syscall.SIGHUP)
	res := <-done
	if res.code != 0 || !strings.Contains(res.stdout, "to "+versionB) {
		t.Fatalf("upgrade: exit %d, stdout %q, stderr %q", res.code, res.stdout, res.stderr)
	}
	w2 := waitServing(t, s.addr, 2, 10*time.Second)
	waitStatus(t, s.statusFile, statusLine(2, w2), 10*time.Second)
	s.expectSequence(`^received USR2`, `^starting new worker `+strconv.Itoa(w2)+`$`, `^upgraded from `,
		`^new worker is now running, sending TERM to old workers:`+strconv.Itoa(w)+`$`)
	time.Sleep(1500 * time.Millisecond) // no second restart follows
	load.Finish(t, "upgrade during a restart")
	if n := s.count(`^starting new worker`); n != 2 {
		t.Errorf("%d workers started, want 2: one restart for the HUP", n)
	}
	if !proc.WaitDead(w, 5*time.Second) {
		t.Errorf("old worker %d still alive", w)
	}
}

func TestUpgradeTERMDuringTheUpgradeStops(t *testing.T) {
	bins := upgradeBins(t)
	s := startUpgradeServer(t, nil)
	w := s.worker(1, 10*time.Second)
	waitServing(t, s.addr, 1, 10*time.Second)
	slowCandidate(t, s.exe, bins[1], ":")
	done := make(chan runResult)
	go func() { done <- upgradeCmd(t, s.pidFile) }()
	s.waitLine(5*time.Second, `^received USR2`, 1)
	s.signal(syscall.SIGTERM)
	if code := s.wait(10 * time.Second); code != 0 {
		t.Errorf("exit status %d after TERM, want 0", code)
	}
	res := <-done
	if res.code != 1 {
		t.Errorf("upgrade: exit %d, stdout %q, stderr %q; want 1", res.code, res.stdout, res.stderr)
	}
	if proc.Alive(w) {
		t.Errorf("worker %d alive after the bridge exited", w)
	}
	for _, f := range []string{s.pidFile, s.statusFile, s.pidFile + ".upgrade"} {
		if fileExists(f) {
			t.Errorf("%s left behind", f)
		}
	}
}

// A worker killed while the process runs neither image (the exec runs a stand-in that
// kills it, waits 300 ms and then execs the new ss-bridge) is a zombie whose SIGCHLD went
// to no handler: the new image reaps it, reports it and starts another.
func TestUpgradeReapsAWorkerThatExitedDuringTheExec(t *testing.T) {
	bins := upgradeBins(t)
	execkill := execKill(t)
	dir := t.TempDir()
	exe, pidFile, killFile := filepath.Join(dir, "ss-bridge"), filepath.Join(dir, "pid"), filepath.Join(dir, "kill")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	install(t, bins[0], exe, 0o755)
	b := startBridgeWith(t, bridgeConfig{bin: exe, env: []string{"EXECKILL_BINARY=" + bins[1], "EXECKILL_PIDFILE=" + killFile}},
		cmdArgs([]string{"--port=" + addr, "--pid-file=" + pidFile, "--interval=0.5"}, goWorker())...)
	w := b.worker(1, 10*time.Second)
	waitServing(t, addr, 1, 10*time.Second)
	time.Sleep(1500 * time.Millisecond) // up long enough to be restarted at once
	if err := os.WriteFile(killFile, []byte(strconv.Itoa(w)), 0o644); err != nil {
		t.Fatal(err)
	}
	install(t, execkill, exe, 0o755)
	mustUpgrade(t, pidFile, b.pid, versionA, versionB)
	b.waitLine(10*time.Second, fmt.Sprintf(`^worker %d died unexpectedly with status:9, restarting$`, w), 1)
	w2 := waitServing(t, addr, 2, 10*time.Second)
	if w2 == w {
		t.Fatalf("the killed worker %d still answers", w)
	}
	// Reported by the new image, after its "upgraded" line.
	b.expectSequence(`^upgraded from `, fmt.Sprintf(`^worker %d died unexpectedly`, w), `^starting new worker`)
	if st, ok := proc.ReadStat(w); ok && st.State == 'Z' {
		t.Errorf("worker %d left a zombie", w)
	}
}

// After an upgrade the workers still get --signal-on-term when the bridge is killed with
// SIGKILL: their parent-death signal survived the exec.
func TestUpgradeKeepsTheParentDeathSignal(t *testing.T) {
	bins := upgradeBins(t)
	s := startUpgradeServer(t, []string{"--signal-on-term=USR1"})
	w := s.worker(1, 10*time.Second)
	waitServing(t, s.addr, 1, 10*time.Second)
	for i := range 3 {
		install(t, bins[(i+1)%2], s.exe, 0o755)
		mustUpgrade(t, s.pidFile, s.pid, []string{versionA, versionB}[i%2], []string{versionA, versionB}[(i+1)%2])
	}
	if s.count(fmt.Sprintf(`^worker %d got`, w)) != 0 {
		t.Fatalf("the worker got a signal during the upgrades:\n%s", s.log.String())
	}
	s.signal(syscall.SIGKILL)
	s.waitLine(5*time.Second, fmt.Sprintf(`^worker %d got USR1$`, w), 1)
	if !proc.WaitDead(w, 10*time.Second) {
		t.Errorf("worker %d still alive after its parent died", w)
	}
}

func TestUpgradeDaemon(t *testing.T) {
	bins := upgradeBins(t)
	dir := t.TempDir()
	exe, pidFile, logFile := filepath.Join(dir, "ss-bridge"), filepath.Join(dir, "pid"), filepath.Join(dir, "log")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	install(t, bins[0], exe, 0o755)
	var daemon int
	var workers []int
	t.Cleanup(func() {
		if daemon > 0 && proc.Alive(daemon) {
			syscall.Kill(daemon, syscall.SIGKILL)
		}
		for _, w := range workers {
			killIfOurs(w)
		}
		if t.Failed() {
			data, _ := os.ReadFile(logFile)
			t.Logf("log file:\n%s", data)
		}
	})
	run := func(bin string, args ...string) (int, string) {
		cmd := exec.Command(bin, args...)
		cmd.Env = cleanEnv()
		out, _ := cmd.CombinedOutput()
		return cmd.ProcessState.ExitCode(), string(out)
	}
	args := cmdArgs([]string{"--daemonize", "--log-file=" + logFile, "--pid-file=" + pidFile, "--port=" + addr}, goWorker())
	if code, out := run(exe, args...); code != 0 {
		t.Fatalf("--daemonize: exit %d: %s", code, out)
	}
	var err error
	daemon, err = readPid(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	w := waitServing(t, addr, 1, 10*time.Second)
	workers = append(workers, w)
	load := httpLoad(addr)
	for i := range 5 {
		install(t, bins[(i+1)%2], exe, 0o755)
		mustUpgrade(t, pidFile, daemon, []string{versionA, versionB}[i%2], []string{versionA, versionB}[(i+1)%2])
		// The lock is still held: a second server with the pid file is refused.
		if code, out := run(exe, args...); code != 1 || !strings.Contains(out, "another server is running") {
			t.Errorf("a second server after upgrade %d: exit %d: %s", i+1, code, out)
		}
	}
	load.Finish(t, "5 upgrades of a daemon")
	if pid, gen, err := getPidGen(addr); err != nil || pid != w || gen != 1 {
		t.Errorf("after the upgrades: worker %d gen %d err %v, want %d gen 1", pid, gen, err, w)
	}
	if code, out := run(exe, "stop", "--pid-file="+pidFile, "--timeout=10"); code != 0 {
		t.Fatalf("stop: exit %d: %s", code, out)
	}
	if proc.Alive(daemon) || proc.Alive(w) {
		t.Errorf("stop returned while the daemon (%v) or the worker (%v) is alive", proc.Alive(daemon), proc.Alive(w))
	}
	if fileExists(pidFile) || fileExists(pidFile+".upgrade") {
		t.Errorf("pid file or upgrade result left behind")
	}
	waitFileContains(t, logFile, 3*time.Second, "upgraded from "+versionB+" to "+versionA, "exiting\n")
}

func readPid(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

// The exec leaves USR2 and ALRM blocked on the main thread (so that one arriving then
// waits for the new image); workers forked after an upgrade must not inherit that mask.
func TestUpgradeWorkersStartWithNothingBlocked(t *testing.T) {
	bins := upgradeBins(t)
	s := startUpgradeServer(t, []string{"--interval=0"}, "sleep", "1000")
	s.worker(1, 10*time.Second)
	install(t, bins[1], s.exe, 0o755)
	mustUpgrade(t, s.pidFile, s.pid, versionA, versionB)
	s.signal(syscall.SIGHUP)
	w := s.worker(2, 10*time.Second)
	blocked := "unknown"
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", w)); strings.HasPrefix(string(cmdline), "sleep") {
			status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", w))
			for _, line := range strings.Split(string(status), "\n") {
				if v, ok := strings.CutPrefix(line, "SigBlk:"); ok {
					blocked = strings.TrimSpace(v)
				}
			}
			break
		}
	}
	if blocked != "0000000000000000" {
		data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", w))
		t.Errorf("worker %d started after the upgrade has signals blocked:\n%s", w, data)
	}
}

// With --ready=notify every worker has a notify socket of its own, which crosses the
// exec: after the upgrades the bridge holds as many descriptors as before, the worker's
// socket still works (its STOPPING=1 and exit are seen), and a new generation is still
// started by its READY=1.
func TestUpgradeCarriesTheNotifySockets(t *testing.T) {
	bins := upgradeBins(t)
	s := startUpgradeServer(t, []string{"--ready=notify", "--ready-timeout=10"}, goWorker("-ready")...)
	w := s.worker(1, 10*time.Second)
	waitStatus(t, s.statusFile, statusLine(1, w), 10*time.Second)
	fds := proc.FDCount(s.pid)
	for i := range 4 {
		install(t, bins[(i+1)%2], s.exe, 0o755)
		mustUpgrade(t, s.pidFile, s.pid, []string{versionA, versionB}[i%2], []string{versionA, versionB}[(i+1)%2])
	}
	if now := proc.FDCount(s.pid); now != fds {
		t.Errorf("%d descriptors after the upgrades, %d before", now, fds)
	}
	s.signal(syscall.SIGHUP)
	w2 := waitServing(t, s.addr, 2, 15*time.Second)
	waitStatus(t, s.statusFile, statusLine(2, w2), 10*time.Second)
	s.waitLine(10*time.Second, fmt.Sprintf(`^old worker %d died, status:0$`, w), 1)
	if now := proc.FDCount(s.pid); now != fds {
		t.Errorf("%d descriptors after the restart, %d before", now, fds)
	}
}

// 50 upgrades and 50 HUPs at offsets from 0 to 90 ms of each other, under load: no request fails, every
// HUP makes a newer generation serve, and the bridge ends with one worker, no zombie and
// the descriptors it started with. A HUP that lands in the instant of the exec itself is
// lost (SIG_IGN, see the README); it is then sent again and counted.
func TestUpgradesInterleavedWithHUPs(t *testing.T) {
	bins := upgradeBins(t)
	s := startUpgradeServer(t, []string{"--interval=0"})
	s.worker(1, 10*time.Second)
	waitServing(t, s.addr, 1, 10*time.Second)
	fds := proc.FDCount(s.pid)
	load := httpLoad(s.addr)
	gen, lost := 1, 0
	const rounds = 50
	for i := range rounds {
		install(t, bins[(i+1)%2], s.exe, 0o755)
		done := make(chan runResult)
		go func() { done <- upgradeCmd(t, s.pidFile) }()
		time.Sleep(time.Duration(i*13%90) * time.Millisecond)
		s.signal(syscall.SIGHUP)
		if res := <-done; res.code != 0 {
			t.Fatalf("upgrade %d: exit %d, %q %q", i+1, res.code, res.stdout, res.stderr)
		}
		for try := 0; ; try++ {
			if _, g, err := getPidGen(s.addr); err == nil && g > gen {
				gen = g
				break
			}
			if try == 100 { // 2 s
				lost++
				s.signal(syscall.SIGHUP)
			}
			if try > 500 {
				t.Fatalf("round %d: no generation newer than %d serves", i+1, gen)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	load.Finish(t, fmt.Sprintf("%d upgrades interleaved with HUPs", rounds))
	t.Logf("%d of %d HUPs were lost in the exec and sent again", lost, rounds)
	w := waitServing(t, s.addr, gen, 10*time.Second)
	waitStatus(t, s.statusFile, statusLine(gen, w), 10*time.Second)
	for _, st := range proc.Children(s.pid) {
		if st.PID != w {
			t.Errorf("the bridge has a child %d (state %c) besides its worker %d", st.PID, st.State, w)
		}
	}
	if now := proc.FDCount(s.pid); now != fds {
		t.Errorf("%d descriptors after the rounds, %d before", now, fds)
	}
}

var (
	execKillBuild sync.Once
	execKillErr   error
)

// execKill builds testdata/execkill once.
func execKill(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(e2eBinDir, "execkill")
	execKillBuild.Do(func() { execKillErr = e2eGoBuild("./testdata/execkill", bin) })
	if execKillErr != nil {
		t.Fatal(execKillErr)
	}
	return bin
}

// A HUP sent while the process is between two images is lost: HUP is ignored then, as
// a pending one would kill the new image. --restart sees the upgrade end meanwhile (the
// result file) and sends its HUP again, so it still returns with the new generation.
func TestRestartResendsAHUPLostInAnUpgrade(t *testing.T) {
	bins := upgradeBins(t)
	dir := t.TempDir()
	exe, pidFile, statusFile := filepath.Join(dir, "ss-bridge"), filepath.Join(dir, "pid"), filepath.Join(dir, "status")
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	install(t, bins[0], exe, 0o755)
	b := startBridgeWith(t, bridgeConfig{bin: exe, env: []string{"EXECKILL_BINARY=" + bins[1]}},
		cmdArgs([]string{"--port=" + addr, "--pid-file=" + pidFile, "--status-file=" + statusFile, "--interval=0"}, goWorker())...)
	w := b.worker(1, 10*time.Second)
	waitStatus(t, statusFile, statusLine(1, w), 10*time.Second)
	ek := execKill(t)
	install(t, ek, exe, 0o755)
	done := make(chan runResult)
	go func() { done <- upgradeCmd(t, pidFile) }()
	// The stand-in sleeps 300 ms between the images: wait until the process runs it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if isFile(fmt.Sprintf("/proc/%d/exe", b.pid), exe) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bridge never ran the stand-in")
		}
	}
	res := runBridgeCmd(t, 20*time.Second, nil, "--restart", "--pid-file="+pidFile, "--status-file="+statusFile, "--timeout=10")
	if res.code != 0 {
		t.Errorf("--restart during the upgrade: exit %d, %q", res.code, res.stderr)
	}
	if up := <-done; up.code != 0 {
		t.Errorf("upgrade: exit %d, %q %q", up.code, up.stdout, up.stderr)
	}
	waitServing(t, addr, 2, 10*time.Second)
}

// isFile reports whether path is the same file as other.
func isFile(path, other string) bool {
	a, err1 := os.Stat(path)
	b, err2 := os.Stat(other)
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// A new program that passes the preflight but cannot resume after the exec (built to fail
// there, with service.failResume) executes the old program again, from the descriptor the
// old image left open (its file was replaced), with the same state: the old program
// carries on, under load, with the same pid and worker, and the upgrade fails with the
// reason.
func TestUpgradeRollsBackWhenTheNewProgramCannotResume(t *testing.T) {
	bins := upgradeBins(t)
	broken := filepath.Join(e2eBinDir, "ss-bridge-broken")
	brokenBuild.Do(func() {
		flags := append(testkit.RaceFlags(), "-ldflags=-X github.com/ss-bridge/ss-bridge/cli.version=9.0.0-broken"+
			" -X 'github.com/ss-bridge/ss-bridge/service.failResume=injected failure'")
		brokenErr = e2eGoBuild("../../cmd/ss-bridge", broken, flags...)
	})
	if brokenErr != nil {
		t.Fatal(brokenErr)
	}
	s := startUpgradeServer(t, nil)
	w := s.worker(1, 10*time.Second)
	waitServing(t, s.addr, 1, 10*time.Second)
	fds := proc.FDCount(s.pid)
	load := httpLoad(s.addr)
	install(t, broken, s.exe, 0o755)
	res := upgradeCmd(t, s.pidFile)
	want := "after the exec: resume after an upgrade: injected failure; rolled back to " + versionA
	if res.code != 1 || !strings.Contains(res.stderr, want) {
		t.Errorf("upgrade: exit %d, stderr %q; want 1 and %q", res.code, res.stderr, want)
	}
	s.waitLine(5*time.Second, `^upgrade failed after the exec: .*; rolled back to `+regexpQuote(versionA)+` \(pid `+strconv.Itoa(s.pid)+` unchanged\)$`, 1)
	install(t, bins[1], s.exe, 0o755)
	mustUpgrade(t, s.pidFile, s.pid, versionA, versionB)
	load.Finish(t, "a rolled back upgrade and a good one")
	if pid, gen, err := getPidGen(s.addr); err != nil || pid != w || gen != 1 {
		t.Errorf("worker %d gen %d err %v, want %d gen 1", pid, gen, err, w)
	}
	if now := proc.FDCount(s.pid); now != fds {
		t.Errorf("%d descriptors after the rollback and an upgrade, %d before", now, fds)
	}
}

var (
	brokenBuild sync.Once
	brokenErr   error
)

// The upgrade result file is written beside the pid file, often in a world-writable
// directory: a symlink planted at the name of its temporary must not make the server write
// through it into another file.
func TestUpgradeResultNotWrittenThroughASymlink(t *testing.T) {
	bins := upgradeBins(t)
	s := startUpgradeServer(t, nil)
	waitServing(t, s.addr, 1, 10*time.Second)
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The names a careless writer would use.
	for _, name := range []string{s.pidFile + ".upgrade.tmp", s.pidFile + ".upgrade.new"} {
		if err := os.Symlink(victim, name); err != nil {
			t.Fatal(err)
		}
	}
	install(t, bins[1], s.exe, 0o755)
	mustUpgrade(t, s.pidFile, s.pid, versionA, versionB)
	if data, _ := os.ReadFile(victim); string(data) != "precious\n" {
		t.Fatalf("the file a planted symlink points at was overwritten: %q", data)
	}
}

// A self-upgrade while the --log-file command is down, waiting for its restart: the new
// image must start it, or nothing reads the log pipe any more (the old image's watch of the
// pipe ends with the exec) and the workers block once it is full.
func TestUpgradeWhileTheLogCommandIsDown(t *testing.T) {
	bins := upgradeBins(t)
	logged := filepath.Join(t.TempDir(), "log")
	s := startUpgradeServer(t, []string{"--log-file=| head -c 20 >> " + logged},
		"sh", "-c", "while :; do echo tick; sleep 0.05; done")
	// The fifth exit is followed by a wait of 1.6 s before the restart.
	s.waitLine(30*time.Second, `log command .* exited; keeping the log for it`, 5)
	install(t, bins[1], s.exe, 0o755)
	mustUpgrade(t, s.pidFile, s.pid, versionA, versionB)
	size := func() int64 {
		st, err := os.Stat(logged)
		if err != nil {
			return 0
		}
		return st.Size()
	}
	before := size()
	deadline := time.Now().Add(5 * time.Second)
	for size() <= before {
		if time.Now().After(deadline) {
			t.Fatalf("nothing reached the log command after the upgrade (%d bytes)", before)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// No garbage collection runs during an upgrade, in the old image or the new one before it
// reports the outcome: at the GOGC of 20 the bridge runs with, the upgrade's own garbage
// would start one, whose stop-the-world waits for the preflight's vfork and whose marking
// competes with the new image's start, for milliseconds each. The runtime's own trace
// (GODEBUG=gctrace=1, inherited across the exec) says when one runs; the worker is not a
// Go program, so every trace line is the bridge's or its preflight's.
func TestUpgradeRunsNoGarbageCollection(t *testing.T) {
	bins := upgradeBins(t)
	dir := t.TempDir()
	exe, pidFile := filepath.Join(dir, "ss-bridge"), filepath.Join(dir, "pid")
	install(t, bins[0], exe, 0o755)
	b := startBridgeWith(t, bridgeConfig{bin: exe, env: []string{"GODEBUG=gctrace=1"}},
		"--port="+fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--pid-file="+pidFile, "--interval=0", "--", "sleep", "100000")
	waitFileContains(t, pidFile, 10*time.Second, strconv.Itoa(b.pid))
	const upgrades = 6
	for i := range upgrades {
		from, to := versionA, versionB
		if i%2 == 1 {
			from, to = versionB, versionA
		}
		install(t, bins[(i+1)%2], exe, 0o755)
		mustUpgrade(t, pidFile, b.pid, from, to)
	}
	upgrading := false
	for _, line := range strings.Split(b.log.String(), "\n") {
		switch {
		case strings.HasPrefix(line, "received USR2"):
			upgrading = true
		case strings.HasPrefix(line, "upgraded from"):
			upgrading = false
		case upgrading && strings.HasPrefix(line, "gc "):
			t.Errorf("a collection during an upgrade: %s", line)
		}
	}
}

// An "ok" from the preflight is acted on at once, not once the candidate has exited: here
// the candidate's wrapper lingers 3 s after the real preflight has answered. The upgrade
// is done well before, and the new image reaps the lingering preflight when it exits,
// without reporting it as a stray process.
func TestUpgradeDoesNotWaitForThePreflightsExit(t *testing.T) {
	bins := upgradeBins(t)
	s := startUpgradeServer(t, nil)
	w := s.worker(1, 10*time.Second)
	script := fmt.Sprintf("#!/bin/sh\nif [ -n \"$SS_BRIDGE_PREFLIGHT\" ]; then %s \"$@\"; status=$?; sleep 3; exit $status; fi\nexec %s \"$@\"\n", bins[1], bins[1])
	installBytes(t, []byte(script), s.exe, 0o755)
	t0 := time.Now()
	mustUpgrade(t, s.pidFile, s.pid, versionA, versionB)
	if took := time.Since(t0); took > 2500*time.Millisecond {
		t.Errorf("the upgrade took %v: it waited for the preflight's exit", took.Round(time.Millisecond))
	}
	time.Sleep(4 * time.Second) // the preflight has exited
	for _, pid := range descendants(s.pid) {
		if st, ok := proc.ReadStat(pid); ok && st.State == 'Z' {
			t.Errorf("process %d left a zombie", pid)
		}
	}
	if n := s.count(`not a worker`); n != 0 {
		t.Errorf("%d lines about a process that is not a worker, want none", n)
	}
	if got := s.workerPids(); len(got) != 1 || got[0] != w {
		t.Errorf("workers after the upgrade: %v, want [%d]", got, w)
	}
	// The next upgrade, from a plain binary, works as before.
	install(t, bins[0], s.exe, 0o755)
	mustUpgrade(t, s.pidFile, s.pid, versionB, versionA)
}
