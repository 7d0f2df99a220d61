package supervisor

import (
	"fmt"
	"github.com/ss-bridge/ss-bridge/notify"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// envOf returns a variable of a spawned worker's environment.
func envOf(r spawnRecord, name string) (string, bool) {
	for _, kv := range r.env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v, true
		}
	}
	return "", false
}

// slotGen returns a spawned worker's slot and generation, from its
// environment.
func slotGen(t *testing.T, r spawnRecord) (string, string) {
	t.Helper()
	slot, ok := envOf(r, SlotEnv)
	if !ok {
		t.Fatalf("worker %d has no %s", r.pid, SlotEnv)
	}
	gen, _ := envOf(r, "SERVER_STARTER_GENERATION")
	return slot, gen
}

func (h *harness) count(kind EventKind) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, e := range h.events {
		if e.Kind == kind {
			n++
		}
	}
	return n
}

// signalled lists the pids sent sig, in order.
func (f *fakeOS) signalled(sig syscall.Signal) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	var pids []int
	for _, k := range f.kills {
		if k.sig == sig {
			pids = append(pids, k.pid)
		}
	}
	return pids
}

func (f *fakeOS) aliveCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.alive)
}

func TestPoolStartsEverySlotAndIsReadyWhenAllServe(t *testing.T) {
	h := start(t, Config{Workers: 3, Interval: 100 * time.Millisecond})
	h.waitEvent(Started, 1)
	spawns := h.os.spawned()
	if len(spawns) != 3 {
		t.Fatalf("%d workers started, want 3:\n%s", len(spawns), h.log)
	}
	for i, r := range spawns {
		slot, gen := slotGen(t, r)
		if slot != string(rune('0'+i)) || gen != "1" {
			t.Errorf("worker %d: slot %s generation %s, want slot %d generation 1", r.pid, slot, gen, i)
		}
	}
	if n := h.count(Started); n != 1 {
		t.Errorf("%d Started events for the first generation, want 1", n)
	}
	if n := h.count(WorkerStarted); n != 3 {
		t.Errorf("%d WorkerStarted events, want 3", n)
	}
	if got := h.s.poolSummary(); got != "generation 1: 3/3 serving" {
		t.Errorf("summary %q", got)
	}
}

func TestSingleWorkerHasNoSlot(t *testing.T) {
	h := start(t, Config{Interval: 0})
	h.waitLog("starting new worker 101")
	if _, ok := envOf(h.os.spawned()[0], SlotEnv); ok {
		t.Fatalf("a worker without --workers got %s", SlotEnv)
	}
}

// A rolling restart with a surge of 1 starts one new worker at a time,
// signals one old worker as each counts as started, and starts no more while
// two are starting or draining.
func TestRollingRestartReplacesOneAtATimeWithinTheBound(t *testing.T) {
	h := start(t, Config{Workers: 4, Rolling: true, MaxSurge: 1, Interval: 50 * time.Millisecond})
	h.waitEvent(Started, 1)
	h.signal(syscall.SIGHUP)
	// Old workers are not made to exit: after two have been signalled, the
	// roll waits for them to drain.
	h.waitFor("two old workers signalled", func() bool { return len(h.os.signalled(syscall.SIGTERM)) == 2 })
	time.Sleep(300 * time.Millisecond)
	if n := len(h.os.signalled(syscall.SIGTERM)); n != 2 || h.spawnCount() != 6 {
		t.Fatalf("with 2 old workers draining: %d signalled, %d started, want 2 and 6:\n%s", n, h.spawnCount(), h.log)
	}
	if n := h.os.aliveCount(); n > 4+2*1 {
		t.Fatalf("%d processes, want at most N+2K = 6", n)
	}
	for _, pid := range h.os.signalled(syscall.SIGTERM) {
		h.os.exit(pid, 0)
	}
	h.waitEvent(Reloaded, 2)
	got := h.os.signalled(syscall.SIGTERM)
	if len(got) != 4 {
		t.Fatalf("old workers signalled: %v, want 4:\n%s", got, h.log)
	}
	seen := map[int]bool{}
	for _, pid := range got {
		if pid < 101 || pid > 104 || seen[pid] {
			t.Fatalf("signalled %v, want each of 101-104 once", got)
		}
		seen[pid] = true
	}
	// Every new worker was started in the slot of the worker it replaced,
	// only once the one before it had counted as started.
	spawns := h.os.spawned()[4:]
	for i, r := range spawns {
		slot, gen := slotGen(t, r)
		if gen != "2" || slot != string(rune('0'+i)) {
			t.Errorf("replacement %d: slot %s generation %s", i, slot, gen)
		}
		if i > 0 && r.at.Sub(spawns[i-1].at) < 40*time.Millisecond {
			t.Errorf("replacement %d started %v after the one before: more than one at a time", i, r.at.Sub(spawns[i-1].at))
		}
	}
	if !strings.Contains(h.log.String(), "worker 105 (generation 2, slot 0) is now running, sending TERM to old worker 101\n") {
		t.Errorf("log:\n%s", h.log)
	}
}

func TestWholeGenerationRestartSignalsOldOnlyWhenAllStarted(t *testing.T) {
	h := start(t, Config{Workers: 3, ReadyByNotify: true, NotifyDir: shortDir(t)})
	h.waitFor("three workers", func() bool { return h.spawnCount() == 3 })
	for _, pid := range []int{101, 102, 103} {
		h.s.messages <- workerMessage{pid: pid, msg: readyMessage()}
	}
	h.waitEvent(Started, 1)
	h.signal(syscall.SIGHUP)
	h.waitFor("three new workers", func() bool { return h.spawnCount() == 6 })
	h.s.messages <- workerMessage{pid: 104, msg: readyMessage()}
	h.s.messages <- workerMessage{pid: 106, msg: readyMessage()}
	time.Sleep(200 * time.Millisecond)
	if got := h.os.signalled(syscall.SIGTERM); len(got) != 0 {
		t.Fatalf("old workers %v signalled before every new one started:\n%s", got, h.log)
	}
	h.s.messages <- workerMessage{pid: 105, msg: readyMessage()}
	h.waitEvent(Reloaded, 2)
	if got := h.os.signalled(syscall.SIGTERM); len(got) != 3 {
		t.Fatalf("signalled %v", got)
	}
	h.waitLog("new worker is now running, sending TERM to old workers:101,102,103")
}

// A new worker that exits at once stops the roll: no old worker is
// signalled, the other new one is told to go, and the next HUP rolls again.
func TestBadBuildStopsTheRoll(t *testing.T) {
	h := start(t, Config{Workers: 4, Rolling: true, MaxSurge: 2, Interval: 200 * time.Millisecond})
	h.waitEvent(Started, 1)
	h.signal(syscall.SIGHUP)
	h.waitFor("two new workers", func() bool { return h.spawnCount() == 6 })
	h.os.exit(105, 1<<8)
	h.waitEvent(StartFailed, 2)
	h.waitLog("restart stopped: 0 of 4 workers run generation 2, the others keep theirs")
	time.Sleep(400 * time.Millisecond)
	if got := h.os.signalled(syscall.SIGTERM); len(got) != 1 || got[0] != 106 {
		t.Fatalf("signalled %v, want only the other new worker 106:\n%s", got, h.log)
	}
	if n := h.spawnCount(); n != 6 {
		t.Fatalf("%d workers started after the roll stopped, want none more:\n%s", n-6, h.log)
	}
	if got := h.s.poolSummary(); !strings.HasPrefix(got, "generation 1: 4/4 serving") {
		t.Errorf("summary %q", got)
	}
	h.os.exit(106, 0)
	h.signal(syscall.SIGHUP)
	h.waitEvent(Started, 3)
	for _, pid := range []int{101, 102, 103, 104} {
		h.os.exit(pid, 0)
	}
	h.waitEvent(Reloaded, 3)
}

// A new worker that never says READY=1 stops the roll too, after one that
// did has replaced its slot: that slot keeps the new generation.
func TestSilentWorkerStopsTheRollAfterReadyTimeout(t *testing.T) {
	h := start(t, Config{Workers: 3, Rolling: true, ReadyByNotify: true, ReadyTimeout: 300 * time.Millisecond,
		NotifyDir: shortDir(t)})
	h.waitFor("three workers", func() bool { return h.spawnCount() == 3 })
	for _, pid := range []int{101, 102, 103} {
		h.s.messages <- workerMessage{pid: pid, msg: readyMessage()}
	}
	h.waitEvent(Started, 1)
	h.signal(syscall.SIGHUP)
	h.waitFor("a new worker", func() bool { return h.spawnCount() == 4 })
	h.s.messages <- workerMessage{pid: 104, msg: readyMessage()}
	h.waitFor("a second new worker", func() bool { return h.spawnCount() == 5 })
	h.waitEvent(StartFailed, 2)
	h.waitLog("new worker 105 did not report ready within 0.3s")
	h.waitLog("restart stopped: 1 of 3 workers run generation 2, the others keep theirs")
	if got := h.os.signalled(syscall.SIGTERM); len(got) != 2 || got[0] != 101 || got[1] != 105 {
		t.Fatalf("signalled %v, want 101 (replaced) and 105 (silent)", got)
	}
	if got := h.s.poolSummary(); !strings.HasPrefix(got, "generation 1: 2/3 still serving; generation 2: 1/3 serving") {
		t.Errorf("summary %q", got)
	}
}

func TestDeadWorkerIsReplacedInItsSlot(t *testing.T) {
	h := start(t, Config{Workers: 3, Interval: 50 * time.Millisecond})
	h.waitEvent(Started, 1)
	h.os.exit(102, 9)
	h.waitFor("a replacement", func() bool { return h.spawnCount() == 4 })
	slot, gen := slotGen(t, h.os.spawned()[3])
	if slot != "1" || gen != "1" {
		t.Fatalf("replacement in slot %s generation %s, want slot 1 generation 1", slot, gen)
	}
	h.waitLog("worker 102 died unexpectedly with status:9, restarting")
	if n := len(h.os.kills); n != 0 {
		t.Fatalf("%d signals sent to the other workers", n)
	}
}

func TestTTINAndTTOUChangeTheCount(t *testing.T) {
	h := start(t, Config{Workers: 2, Interval: 50 * time.Millisecond})
	h.waitEvent(Started, 1)
	h.signal(syscall.SIGTTIN)
	h.waitLog("received TTIN, workers: 3")
	h.waitFor("a third worker", func() bool { return h.spawnCount() == 3 })
	if slot, gen := slotGen(t, h.os.spawned()[2]); slot != "2" || gen != "1" {
		t.Fatalf("added worker in slot %s generation %s", slot, gen)
	}
	for range 3 {
		h.signal(syscall.SIGTTOU)
	}
	h.waitLog("received TTOU, workers: 1")
	time.Sleep(100 * time.Millisecond)
	if got := h.os.signalled(syscall.SIGTERM); len(got) != 2 || got[0] != 103 || got[1] != 102 {
		t.Fatalf("signalled %v, want 103 then 102", got)
	}
	if n := strings.Count(h.log.String(), "received TTOU"); n != 3 {
		t.Fatalf("%d TTOU lines:\n%s", n, h.log)
	}
}

// TTIN cannot grow a pool past MaxWorkers, the bound of --workers and of
// `scale`: a stream of TTINs would otherwise fork without end.
func TestTTINStopsAtMaxWorkers(t *testing.T) {
	h := start(t, Config{Workers: MaxWorkers, Interval: 50 * time.Millisecond})
	h.waitEvent(Started, 1)
	h.signal(syscall.SIGTTIN)
	h.waitLog(fmt.Sprintf("received TTIN, workers: %d", MaxWorkers))
	time.Sleep(100 * time.Millisecond)
	if n := h.spawnCount(); n != MaxWorkers {
		t.Fatalf("%d workers started, want %d", n, MaxWorkers)
	}
}

func readyMessage() notify.Message {
	return notify.Message{Ready: true, Fields: map[string]string{"READY": "1"}}
}

// shortDir is a temporary directory with a path short enough for the
// notify sockets in it: t.TempDir's, named after the test, may not be.
func shortDir(t *testing.T) string {
	dir, err := os.MkdirTemp("", "pool")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// An exec in the middle of a rolling restart carries the roll on: the
// resumed supervisor replaces the remaining slots, one at a time, and
// reaps a worker that exited during the exec.
func TestPoolResumeMidRollCarriesOn(t *testing.T) {
	cfg := Config{Workers: 3, Rolling: true, Interval: 200 * time.Millisecond, Heartbeat: 10 * time.Millisecond}
	h := start(t, cfg)
	h.waitEvent(Started, 1)
	h.signal(syscall.SIGHUP)
	h.waitFor("slot 0 replaced", func() bool { return len(h.os.signalled(syscall.SIGTERM)) == 1 })
	h.waitFor("slot 1's replacement", func() bool { return h.spawnCount() == 5 })
	st := h.exec()
	if st.Version != 2 || st.Pool == nil || st.Pool.RollGen != 2 || len(st.Pool.Slots) != 3 {
		t.Fatalf("snapshot mid-roll: %+v", st)
	}
	h.os.exitUnnoticed(101, 0) // the old worker of slot 0, draining
	h2 := h.resume(Config{Workers: 3, Rolling: true, Interval: 200 * time.Millisecond, Heartbeat: 10 * time.Millisecond}, st)
	h2.waitLog("old worker 101 died, status:0")
	h2.waitEvent(Reloaded, 2)
	if n := h.spawnCount(); n != 6 {
		t.Fatalf("%d workers started, want 3 and 3 replacements:\n%s", n, h.log)
	}
	for i, r := range h.os.spawned()[3:] {
		if slot, gen := slotGen(t, r); slot != strconv.Itoa(i) || gen != "2" {
			t.Errorf("replacement %d: slot %s generation %s", i, slot, gen)
		}
	}
	if got := h2.s.poolSummary(); !strings.HasPrefix(got, "generation 2: 3/3 serving") {
		t.Errorf("summary %q", got)
	}
}

// A command that is gone at the restart stops the roll like a worker that
// fails to start, and the roll does not count as done.
func TestPoolMissingCommandStopsTheRoll(t *testing.T) {
	h := start(t, Config{Workers: 2, Rolling: true, Interval: 50 * time.Millisecond})
	h.waitEvent(Started, 1)
	h.os.mu.Lock()
	h.os.spawnErr = syscall.ENOENT
	h.os.mu.Unlock()
	h.signal(syscall.SIGHUP)
	h.waitEvent(StartFailed, 2)
	h.waitLog("failed to exec /bin/sh: no such file or directory")
	h.waitLog("restart stopped: 0 of 2 workers run generation 2, the others keep theirs")
	time.Sleep(200 * time.Millisecond)
	if n := h.count(Started); n != 1 {
		t.Fatalf("%d Started events, want only the first generation's:\n%s", n, h.log)
	}
	if n := h.count(Reloaded); n != 0 {
		t.Fatalf("a stopped roll was reported done:\n%s", h.log)
	}
	if got := h.s.poolSummary(); got != "generation 1: 2/2 serving" {
		t.Errorf("summary %q", got)
	}
}

// A HUP during a roll waits for it, even when a slot's refill fails
// meanwhile: one more roll follows the one under way, not one inside it.
func TestPoolHUPDuringRollWaitsForIt(t *testing.T) {
	h := start(t, Config{Workers: 2, Rolling: true, Interval: 150 * time.Millisecond})
	h.waitEvent(Started, 1)
	h.signal(syscall.SIGHUP)
	h.waitLog("starting new worker 103 (generation 2, slot 0)")
	h.signal(syscall.SIGHUP)
	h.os.exit(102, 9) // slot 1's worker dies at once: its refill is a failed start
	h.waitLog("worker 102 died unexpectedly with status:9, restarting")
	h.waitLog("starting new worker 104 (generation 2, slot 1)")
	h.os.exit(104, 1<<8) // and its refill fails to start
	h.waitLog("new worker 104 seems to have failed to start, exit status:256")
	h.waitEvent(Reloaded, 2)
	if n := h.count(StartFailed); n != 0 {
		t.Errorf("a refill's failure during a roll reported as StartFailed, which ends a reload as failed")
	}
	// Old workers drain at once.
	h.waitFor("generation 3's roll", func() bool {
		for _, pid := range h.os.signalled(syscall.SIGTERM) {
			h.os.exit(pid, 0)
		}
		_, ok := h.event(Reloaded, 3)
		return ok
	})
	for _, r := range h.os.spawned() {
		if _, gen := slotGen(t, r); gen == "3" && r.at.Before(h.waitEvent(Reloaded, 2)) {
			t.Fatalf("generation 3 started before generation 2's roll was done:\n%s", h.log)
		}
	}
}

// A worker of the roll's generation that dies while the roll goes on stops
// it, however long after it counted as started (here past --interval + 1 s,
// while the roll waits for two old workers to drain): the slots not yet
// replaced keep their old workers, and the dead one's slot is refilled with
// its own generation.
func TestPoolRollStopsWhenAStartedNewWorkerDies(t *testing.T) {
	tasks := make(chan func())
	h := start(t, Config{Workers: 3, Rolling: true, MaxSurge: 1, Interval: 100 * time.Millisecond, Tasks: tasks})
	h.waitEvent(Started, 1)
	h.signal(syscall.SIGHUP)
	h.waitFor("two old workers signalled", func() bool { return len(h.os.signalled(syscall.SIGTERM)) == 2 })
	time.Sleep(1300 * time.Millisecond) // 104, the first new worker, is past --interval + 1 s
	h.os.exit(104, 9)
	h.waitEvent(StartFailed, 2)
	h.waitLog("worker 104 died unexpectedly with status:9, restarting")
	h.waitLog("restart stopped: 1 of 3 workers run generation 2, the others keep theirs")
	h.os.exit(101, 0)
	h.os.exit(102, 0)
	h.waitFor("slot 0 refilled", func() bool { return h.spawnCount() == 6 })
	time.Sleep(400 * time.Millisecond)
	if got := h.os.signalled(syscall.SIGTERM); len(got) != 2 {
		t.Fatalf("signalled %v, want only 101 and 102, replaced before the death:\n%s", got, h.log)
	}
	if n := h.spawnCount(); n != 6 {
		t.Fatalf("%d workers started, want 3, 2 replacements and slot 0's refill:\n%s", n, h.log)
	}
	if slot, gen := slotGen(t, h.os.spawned()[5]); slot != "0" || gen != "2" {
		t.Errorf("refill in slot %s generation %s, want slot 0 generation 2", slot, gen)
	}
	if n := h.count(Reloaded); n != 0 {
		t.Errorf("a stopped roll was reported done:\n%s", h.log)
	}
	onLoop(t, tasks, func() {
		if got := h.s.poolSummary(); !strings.HasPrefix(got, "generation 1: 1/3 still serving; generation 2: 2/3 serving") {
			t.Errorf("summary %q", got)
		}
	})
}

// A new worker that exited as its --interval ran out, its SIGCHLD not yet
// seen, is found dead before it counts as started: its start failed, and
// the old worker of its slot is not told to go.
func TestPoolIntervalFindsADeadNewWorker(t *testing.T) {
	h := start(t, Config{Workers: 2, Rolling: true, Interval: 200 * time.Millisecond})
	h.waitEvent(Started, 1)
	h.signal(syscall.SIGHUP)
	h.waitLog("starting new worker 103 (generation 2, slot 0)")
	h.os.exitUnnoticed(103, 3<<8)
	h.waitEvent(StartFailed, 2)
	h.waitLog("new worker 103 seems to have failed to start, exit status:768")
	h.waitLog("restart stopped: 0 of 2 workers run generation 2, the others keep theirs")
	if got := h.os.signalled(syscall.SIGTERM); len(got) != 0 {
		t.Fatalf("signalled %v for a dead replacement:\n%s", got, h.log)
	}
}
