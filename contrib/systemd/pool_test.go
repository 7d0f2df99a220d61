//go:build linux

package systemd_test

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Worker pools under systemd (issue 11): a rolling `systemctl reload` of a pool
// of 4 under load, and a bad build that stops the roll.

const poolWorkers, poolSurge = 4, 1

// poolUnit installs app.socket and an app.service running a pool of 4 with
// --rolling (Type=notify-reload, as the example).
func (r *rig) poolUnit(extra string) {
	r.t.Helper()
	r.appUnits("@BRIDGE@ --port=@ADDR@ --ready=notify --ready-timeout=10 --kill-timeout=60 " +
		fmt.Sprintf("--workers=%d %s -- @APP@", poolWorkers, extra))
}

// poolWorker is a worker of the pool, read from the container's /proc.
type poolWorker struct{ pid, gen, slot int }

// poolChildren lists ss-bridge's children (serving, starting or draining),
// with their generation and slot from their environment.
func (r *rig) poolChildren(main int) []poolWorker {
	r.t.Helper()
	out, _ := r.c.Exec("sh", "-c", fmt.Sprintf("cat /proc/%d/task/*/children", main))
	var ws []poolWorker
	for _, f := range strings.Fields(out) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			continue
		}
		envText, err := r.c.Exec("cat", fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			continue // gone meanwhile
		}
		env := map[string]string{}
		for _, kv := range strings.Split(envText, "\x00") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				env[k] = v
			}
		}
		gen, _ := strconv.Atoi(env["SERVER_STARTER_GENERATION"])
		slot, err := strconv.Atoi(env["SERVER_STARTER_WORKER_SLOT"])
		if err != nil {
			r.t.Fatalf("worker %d has no SERVER_STARTER_WORKER_SLOT", pid)
		}
		ws = append(ws, poolWorker{pid, gen, slot})
	}
	return ws
}

// waitPool waits until ss-bridge's children are exactly the n slots of one
// generation gen, and returns them ordered by slot.
func (r *rig) waitPool(main, gen, n int, timeout time.Duration) []poolWorker {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ws := r.poolChildren(main)
		slices.SortFunc(ws, func(a, b poolWorker) int { return a.slot - b.slot })
		ok := len(ws) == n
		for i, w := range ws {
			ok = ok && w.gen == gen && w.slot == i
		}
		if ok {
			return ws
		}
		if time.Now().After(deadline) {
			r.dumpJournal()
			r.t.Fatalf("ss-bridge's children after %v: %+v, want the %d slots of generation %d", timeout, ws, n, gen)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

var (
	poolStartRE = regexp.MustCompile(`starting new worker (\d+) \(generation (\d+), slot (\d+)\)`)
	poolDiedRE  = regexp.MustCompile(`(?:worker|old worker|new worker) (\d+) (?:died|seems to have failed to start)`)
)

// poolPeak replays ss-bridge's journal from the line containing since: each
// "starting new worker" adds a process and each death removes one, so the
// peak is the most worker processes that existed at once, draining ones
// included, as ss-bridge saw them.
func poolPeak(journal, since string, live int) (peak, started int) {
	_, rest, _ := strings.Cut(journal, since)
	peak = live
	for _, line := range strings.Split(rest, "\n") {
		switch {
		case poolStartRE.MatchString(line):
			live++
			started++
		case poolDiedRE.MatchString(line):
			live--
		}
		peak = max(peak, live)
	}
	return peak, started
}

// startPool starts app.service as a pool of poolWorkers with the extra options and
// returns once its first generation serves in every slot.
func startPool(t *testing.T, extra string) (r *rig, main int, workers []poolWorker) {
	r = newRig(t)
	r.poolUnit(extra)
	r.systemctl("start", "app.service")
	main = r.mainPID("app.service")
	workers = r.waitPool(main, 1, poolWorkers, 15*time.Second)
	r.waitProperty("app.service", "StatusText", "generation 1: 4/4 serving", 10*time.Second)
	return r, main, workers
}

// A rolling `systemctl reload` of a pool of 4 under load: no request fails,
// systemctl returns once every slot runs generation 2 (new pids, same slots),
// and at no moment were there more than N+2K worker processes (N+K serving or
// starting, K draining).
func TestPoolRollingReloadUnderLoad(t *testing.T) {
	r, main, old := startPool(t, fmt.Sprintf("--rolling --max-surge=%d", poolSurge))

	l := startLoad(r.addr, 6)
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	r.systemctl("reload", "app.service")
	took := time.Since(start)
	// systemctl returns after the roll: STATUS= names generation 2 serving
	// every slot (old workers may still be draining).
	status := r.property("app.service", "StatusText")
	if !regexp.MustCompile(`^generation 2: 4/4 serving(; \d of generation 1 draining)?$`).MatchString(status) {
		t.Errorf("StatusText right after systemctl reload returned: %q, want generation 2 serving all 4 slots", status)
	}
	serving := map[int]bool{}
	for _, w := range r.poolChildren(main) {
		if w.gen == 2 {
			serving[w.slot] = true
		}
	}
	if len(serving) != poolWorkers {
		t.Errorf("right after systemctl reload returned, slots running generation 2: %v, want all %d", serving, poolWorkers)
	}
	time.Sleep(500 * time.Millisecond)
	l.Finish(t, "rolling reload of 4 workers")

	now := r.waitPool(main, 2, poolWorkers, 15*time.Second)
	for i, w := range now {
		if w.pid == old[i].pid {
			t.Errorf("slot %d still runs worker %d after the reload", i, w.pid)
		}
	}
	// Every new worker started, signalled its slot's old worker, one slot at a
	// time.
	journal := r.journal("app.service")
	for i, o := range old {
		re := regexp.MustCompile(fmt.Sprintf(`worker %d \(generation 2, slot %d\) is now running, sending TERM to old worker %d\n`, now[i].pid, i, o.pid))
		if !re.MatchString(journal) {
			t.Errorf("the journal does not say that worker %d replaced worker %d in slot %d (want %q)", now[i].pid, o.pid, i, re)
		}
	}
	peak, started := poolPeak(journal, "received HUP", poolWorkers)
	t.Logf("systemctl reload took %v; %d workers started, peak %d worker processes; StatusText %q", took.Round(time.Millisecond), started, peak, status)
	if started != poolWorkers {
		t.Errorf("%d workers started by the reload, want %d", started, poolWorkers)
	}
	if bound := poolWorkers + 2*poolSurge; peak > bound {
		t.Errorf("peak %d worker processes during the roll, want at most N+2K = %d", peak, bound)
	}
	r.waitProperty("app.service", "StatusText", "generation 2: 4/4 serving", 10*time.Second)
}

// A bad build (the new worker exits at once) stops the roll after K=1
// worker: `ss-bridge reload app.service` exits 1, systemctl returns, the four
// old workers keep serving without a failed request, and once fixed the next
// reload rolls every slot.
func TestPoolRollingReloadBadBuild(t *testing.T) {
	r, main, old := startPool(t, fmt.Sprintf("--rolling --max-surge=%d", poolSurge))

	l := startLoad(r.addr, 6)
	time.Sleep(300 * time.Millisecond)
	r.exec("touch", "/run/app-fail")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	out, reloadErr := r.c.ExecContext(ctx, nil, r.bridge, "reload", "app.service")
	took := time.Since(start)
	status := r.property("app.service", "StatusText")
	t.Logf("ss-bridge reload app.service with a bad build: %v after %v: %q; StatusText %q", reloadErr, took.Round(time.Millisecond), strings.TrimSpace(out), status)
	if ctx.Err() != nil {
		r.dumpJournal()
		t.Fatalf("ss-bridge reload still running after %v", took.Round(time.Millisecond))
	}
	if reloadErr == nil {
		t.Errorf("ss-bridge reload of a bad build succeeded (%q), want exit 1", out)
	}
	if !strings.HasPrefix(status, "reload failed: ") {
		t.Errorf("StatusText after the bad build: %q, want reload failed: ...", status)
	}
	r.waitJournal("app.service", regexp.MustCompile(`restart stopped: 0 of 4 workers run generation 2, the others keep theirs\n`), 5*time.Second)
	// The old workers keep serving, and nothing more is tried.
	time.Sleep(1500 * time.Millisecond)
	l.Finish(t, "bad build under load")
	if s := r.property("app.service", "ActiveState"); s != "active" {
		t.Errorf("ActiveState after the bad build: %s", s)
	}
	still := r.waitPool(main, 1, poolWorkers, 5*time.Second)
	for i := range old {
		if still[i].pid != old[i].pid {
			t.Errorf("slot %d runs worker %d after the bad build, want the old worker %d", i, still[i].pid, old[i].pid)
		}
	}
	journal := r.journal("app.service")
	if _, started := poolPeak(journal, "received HUP", poolWorkers); started != poolSurge {
		t.Errorf("%d new workers started by the bad build, want K = %d (the roll stops at the first)", started, poolSurge)
	}

	// Fixed: the next reload rolls every slot onto a new generation.
	r.exec("rm", "/run/app-fail")
	r.systemctl("reload", "app.service")
	now := r.waitPool(main, 3, poolWorkers, 15*time.Second)
	for i, w := range now {
		if w.pid == old[i].pid {
			t.Errorf("slot %d still runs worker %d after the fixed reload", i, w.pid)
		}
	}
	r.waitProperty("app.service", "StatusText", "generation 3: 4/4 serving", 10*time.Second)
}

// A bad build reloaded with whole-generation restarts (--workers without
// --rolling): all 4 new workers start, the first to exit stops the restart
// and the others are sent TERM; the old workers keep serving. The failure
// must stay visible: `ss-bridge reload` exits 1 naming it, and StatusText
// keeps "reload failed: ..." until the next reload, as it does for a single
// worker. (It failed before the observer kept the failure: the exits of the
// 3 new workers told to go rewrote STATUS= to "generation 1: 4/4 serving" a
// few milliseconds after "reload failed: ...".)
func TestPoolWholeGenerationBadBuildStaysReported(t *testing.T) {
	r, main, old := startPool(t, "")

	l := startLoad(r.addr, 6)
	time.Sleep(300 * time.Millisecond)
	r.exec("touch", "/run/app-fail")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, reloadErr := r.c.ExecContext(ctx, nil, r.bridge, "reload", "app.service")
	if ctx.Err() != nil {
		r.dumpJournal()
		t.Fatal("ss-bridge reload still running after 30s")
	}
	r.waitJournal("app.service", regexp.MustCompile(`restart stopped: 0 of 4 workers run generation 2, the others keep theirs\n`), 5*time.Second)
	time.Sleep(time.Second)
	status := r.property("app.service", "StatusText")
	t.Logf("ss-bridge reload: %v: %q; StatusText 1 s later: %q", reloadErr, strings.TrimSpace(out), status)
	l.Finish(t, "whole-generation bad build under load")
	if reloadErr == nil {
		t.Errorf("ss-bridge reload of a bad build succeeded (%q), want exit 1", out)
	} else if !strings.Contains(reloadErr.Error(), "reload failed: new worker") {
		t.Errorf("ss-bridge reload says %q, want the reason (reload failed: new worker ... exited ...)", reloadErr)
	}
	if !strings.HasPrefix(status, "reload failed: ") {
		t.Errorf("StatusText 1 s after the stopped restart: %q, want it to still say reload failed: ...", status)
	}
	still := r.waitPool(main, 1, poolWorkers, 5*time.Second)
	for i := range old {
		if still[i].pid != old[i].pid {
			t.Errorf("slot %d runs worker %d after the bad build, want the old worker %d", i, still[i].pid, old[i].pid)
		}
	}
}
