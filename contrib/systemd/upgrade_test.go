//go:build linux

package systemd_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Two builds of ss-bridge that differ only in their version, for self-upgrades.
var versions struct {
	once sync.Once
	dir  string
	bins [2]string
	err  error
}

var upgradeVersions = [2]string{"9.0.0-unit-a", "9.0.0-unit-b"}

func versionedBridges(t *testing.T) [2]string {
	t.Helper()
	versions.once.Do(func() {
		if versions.dir, versions.err = os.MkdirTemp("", "systemd-test-versions-"); versions.err != nil {
			return
		}
		for i, v := range upgradeVersions {
			out := filepath.Join(versions.dir, "ss-bridge-"+v)
			cmd := exec.Command("go", "build", "-o", out, "-ldflags=-X github.com/ss-bridge/ss-bridge/cli.version="+v, "../../cmd/ss-bridge")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if b, err := cmd.CombinedOutput(); err != nil {
				versions.err = fmt.Errorf("go build %s: %v: %s", v, err, b)
				return
			}
			versions.bins[i] = out
		}
	})
	if versions.err != nil {
		t.Fatal(versions.err)
	}
	return versions.bins
}

// replaceBridge puts src where the units run ss-bridge from, by rename, as a package
// upgrade does: the running ss-bridge keeps its deleted file.
func (r *rig) replaceBridge(src string) {
	r.t.Helper()
	dst := filepath.Join(r.c.HostDir(), filepath.Base(r.bridge))
	if err := copyFile(src, dst+".new"); err != nil {
		r.t.Fatal(err)
	}
	if err := os.Rename(dst+".new", dst); err != nil {
		r.t.Fatal(err)
	}
}

// `ss-bridge upgrade UNIT` of the socket-activated example unit under load: ss-bridge
// replaces its program in place five times; nothing is refused or fails, MAINPID, its
// start time and the worker stay the same, the unit stays active, and systemctl reload
// still works after.
func TestUpgradeUnitUnderLoad(t *testing.T) {
	bins := versionedBridges(t)
	r := newRig(t)
	r.replaceBridge(bins[0])
	r.appUnits("")
	r.systemctl("start", "app.service")
	worker, gen := r.ask()
	main := r.mainPID("app.service")
	started := r.property("app.service", "ExecMainStartTimestampMonotonic")

	l := startLoad(r.addr, 6)
	const upgrades = 5
	for i := range upgrades {
		from, to := upgradeVersions[i%2], upgradeVersions[(i+1)%2]
		r.replaceBridge(bins[(i+1)%2])
		t0 := time.Now()
		out, err := r.c.Exec(r.bridge, "upgrade", "app.service")
		if err != nil {
			l.Finish(t, "upgrades")
			r.dumpJournal()
			t.Fatalf("upgrade %d: %v (stdout %q)", i+1, err, out)
		}
		want := fmt.Sprintf("app.service: upgraded ss-bridge from %s to %s (pid %d unchanged)\n", from, to, main)
		if out != want {
			t.Errorf("upgrade %d printed %q, want %q", i+1, out, want)
		}
		t.Logf("upgrade %d took %v", i+1, time.Since(t0).Round(time.Millisecond))
		if s := r.property("app.service", "ActiveState"); s != "active" {
			t.Errorf("after upgrade %d app.service is %s", i+1, s)
		}
	}
	time.Sleep(200 * time.Millisecond)
	l.Finish(t, fmt.Sprintf("%d upgrades", upgrades))

	if m := r.mainPID("app.service"); m != main {
		t.Errorf("MainPID %d, was %d", m, main)
	}
	if s := r.property("app.service", "ExecMainStartTimestampMonotonic"); s != started {
		t.Errorf("ExecMainStartTimestampMonotonic %s, was %s", s, started)
	}
	if pid, g := r.ask(); pid != worker || g != gen {
		t.Errorf("after the upgrades: worker %d gen %d, want %d gen %d", pid, g, worker, gen)
	}
	// The status still names the serving generation, for ss-bridge reload and status.
	if st := r.property("app.service", "StatusText"); !strings.HasSuffix(st, fmt.Sprintf("; generation %d (pid %d) serving", gen, worker)) {
		t.Errorf("StatusText %q does not name generation %d (pid %d) serving", st, gen, worker)
	}
	if n := strings.Count(r.journal("app.service"), "upgraded from"); n != upgrades {
		t.Errorf("%d \"upgraded from\" lines in the journal, want %d", n, upgrades)
	}
	// ss-bridge reload reads the serving generation from the status an upgrade left.
	if out, err := r.c.Exec(r.bridge, "reload", "app.service"); err != nil || !strings.HasPrefix(out, fmt.Sprintf("app.service reloaded: generation %d ", gen+1)) {
		t.Errorf("ss-bridge reload after the upgrades: %v %q", err, out)
	}
	r.systemctl("reload", "app.service")
	if pid, g := r.ask(); pid == worker || g != gen+2 {
		t.Errorf("after systemctl reload: worker %d gen %d, want a new worker of gen %d", pid, g, gen+2)
	}
	if m := r.mainPID("app.service"); m != main {
		t.Errorf("MainPID %d after the reload, was %d", m, main)
	}
}

// A candidate that cannot take over is refused: upgrade exits 1 with the reason, and
// the unit carries on as it was.
func TestUpgradeUnitRefused(t *testing.T) {
	bins := versionedBridges(t)
	r := newRig(t)
	r.replaceBridge(bins[0])
	r.appUnits("")
	r.systemctl("start", "app.service")
	worker, _ := r.ask()
	main := r.mainPID("app.service")
	script := filepath.Join(r.c.HostDir(), "broken")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The command itself from a good copy.
	if err := copyFile(bins[0], filepath.Join(r.c.HostDir(), "ctl")); err != nil {
		t.Fatal(err)
	}
	ctl := r.c.GuestPath("ctl")
	r.replaceBridge(script)
	out, err := r.c.Exec(ctl, "upgrade", "app.service")
	if err == nil || !strings.Contains(err.Error(), "exit status 1") || !strings.Contains(err.Error(), "preflight of "+r.bridge+": exited with status 1") {
		t.Errorf("upgrade to a broken candidate: %v (stdout %q)", err, out)
	}
	if m := r.mainPID("app.service"); m != main {
		t.Errorf("MainPID %d, was %d", m, main)
	}
	if s := r.property("app.service", "ActiveState"); s != "active" {
		t.Errorf("app.service is %s", s)
	}
	if pid, _ := r.ask(); pid != worker {
		t.Errorf("worker %d answers, want %d", pid, worker)
	}
	r.replaceBridge(bins[1])
	if out, err := r.c.Exec(ctl, "upgrade", "app.service"); err != nil || !strings.Contains(out, "to "+upgradeVersions[1]) {
		t.Errorf("upgrade after the refusal: %v %q", err, out)
	}
}

// `ss-bridge upgrade UNIT` while the worker floods STATUS=, which ss-bridge forwards:
// the unit's status is the worker's again moments after the new image says how the
// upgrade went, so the outcome is read from the control socket (in the unit's
// RuntimeDirectory=), which keeps it until the next attempt. Each upgrade is reported.
func TestUpgradeUnitWhileWorkerFloodsStatus(t *testing.T) {
	bins := versionedBridges(t)
	r := newRig(t)
	r.replaceBridge(bins[0])
	r.writeApp("app", "#!/bin/sh\nexec @WORKER@ -ready -status-flood \"$@\"\n")
	service := r.unit("app.service", "")
	if !strings.Contains(service, "\n[Service]\n") {
		t.Fatal("app.service has no [Service] section")
	}
	r.installUnits(map[string]string{
		"app.socket":  r.unit("app.socket", ""),
		"app.service": strings.Replace(service, "\n[Service]\n", "\n[Service]\nRuntimeDirectory=app\n", 1),
	})
	r.systemctl("start", "app.service")
	worker, _ := r.ask()
	main := r.mainPID("app.service")
	r.waitStatusContains("app.service", "busy", 10*time.Second)

	const upgrades = 3
	for i := range upgrades {
		from, to := upgradeVersions[i%2], upgradeVersions[(i+1)%2]
		r.replaceBridge(bins[(i+1)%2])
		t0 := time.Now()
		out, err := r.c.Exec(r.bridge, "upgrade", "--timeout=10", "app.service")
		if err != nil {
			t.Fatalf("upgrade %d: %v (stdout %q; status %q)", i+1, err, out, r.property("app.service", "StatusText"))
		}
		want := fmt.Sprintf("app.service: upgraded ss-bridge from %s to %s (pid %d unchanged)\n", from, to, main)
		if out != want {
			t.Errorf("upgrade %d printed %q, want %q", i+1, out, want)
		}
		t.Logf("upgrade %d took %v", i+1, time.Since(t0).Round(time.Millisecond))
	}
	if n := strings.Count(r.journal("app.service"), "upgraded from"); n != upgrades {
		t.Errorf("%d \"upgraded from\" lines in the journal, want %d", n, upgrades)
	}
	// A refused candidate is reported as refused, from the control socket too.
	script := filepath.Join(r.c.HostDir(), "broken")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(bins[0], filepath.Join(r.c.HostDir(), "ctl")); err != nil {
		t.Fatal(err)
	}
	r.replaceBridge(script)
	out, err := r.c.Exec(r.c.GuestPath("ctl"), "upgrade", "--timeout=10", "app.service")
	if err == nil || !strings.Contains(err.Error(), "app.service (pid "+strconv.Itoa(main)+"): preflight of "+r.bridge+": exited with status 1") {
		t.Errorf("upgrade to a broken candidate: %v (stdout %q)", err, out)
	}
	if m := r.mainPID("app.service"); m != main {
		t.Errorf("MainPID %d, was %d", m, main)
	}
	if pid, _ := r.ask(); pid != worker {
		t.Errorf("worker %d answers, want %d", pid, worker)
	}
	// The flood went on throughout: the worker's status is the unit's again.
	r.waitStatusContains("app.service", "busy", 10*time.Second)
}

// waitStatusContains waits until the unit's StatusText contains s.
func (r *rig) waitStatusContains(unit, s string, timeout time.Duration) {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st := r.property(unit, "StatusText")
		if strings.Contains(st, s) {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s's StatusText %q has no %q after %v", unit, st, s, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
