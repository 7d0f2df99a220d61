package supervisor

import (
	"bytes"
	"fmt"
	"github.com/ss-bridge/ss-bridge/internal/ratelog"
	"github.com/ss-bridge/ss-bridge/notify"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fakeOS stands in for the kernel: spawned workers are pids that live until
// the test makes them exit; signals are recorded, never delivered.
type fakeOS struct {
	mu      sync.Mutex
	nextPID int
	spawns  []spawnRecord
	kills   []killRecord
	exits   []exitRecord
	alive   map[int]bool
	// dieOnStart, when set, makes every spawned worker exit at once.
	dieOnStart bool
	// spawnErr, when set, is every spawn's failure to execute.
	spawnErr error
	// The channels of Run's Signals, buffered as NotifySignals buffers
	// them; a signal for a full one is dropped, as os/signal drops it.
	stop, reload, child, scale chan os.Signal
	// dirReads counts the envdir's listings.
	dirReads int
}

type spawnRecord struct {
	pid int
	at  time.Time
	env []string
}

type killRecord struct {
	pid int
	sig syscall.Signal
	at  time.Time
}

type exitRecord struct {
	pid    int
	status syscall.WaitStatus
}

func newFakeOS() *fakeOS {
	return &fakeOS{nextPID: 100, alive: map[int]bool{},
		stop: make(chan os.Signal, 2), reload: make(chan os.Signal, 1), child: make(chan os.Signal, 1),
		scale: make(chan os.Signal, 64)}
}

func (f *fakeOS) sys() sys {
	return sys{
		spawn: func(path string, argv []string, attr *syscall.ProcAttr) (int, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if f.spawnErr != nil {
				return 0, f.spawnErr
			}
			f.nextPID++
			pid := f.nextPID
			f.spawns = append(f.spawns, spawnRecord{pid, time.Now(), attr.Env})
			f.alive[pid] = true
			if f.dieOnStart {
				f.exitLocked(pid, 3<<8)
			}
			return pid, nil
		},
		kill: func(pid int, sig syscall.Signal) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.kills = append(f.kills, killRecord{pid, sig, time.Now()})
			return nil
		},
		readDir: func(name string) ([]os.DirEntry, error) {
			f.mu.Lock()
			f.dirReads++
			f.mu.Unlock()
			return os.ReadDir(name)
		},
		reap: func() (int, syscall.WaitStatus, bool) {
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.exits) == 0 {
				return 0, 0, false
			}
			e := f.exits[0]
			f.exits = f.exits[1:]
			return e.pid, e.status, true
		},
	}
}

// exit makes a worker exit and tells the supervisor with SIGCHLD.
func (f *fakeOS) exit(pid int, status syscall.WaitStatus) {
	f.mu.Lock()
	f.exitLocked(pid, status)
	f.mu.Unlock()
}

func (f *fakeOS) exitLocked(pid int, status syscall.WaitStatus) {
	if !f.alive[pid] {
		return
	}
	delete(f.alive, pid)
	f.exits = append(f.exits, exitRecord{pid, status})
	f.deliver(syscall.SIGCHLD)
}

func (f *fakeOS) spawned() []spawnRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]spawnRecord(nil), f.spawns...)
}

func (f *fakeOS) killsOf(pid int) []killRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []killRecord
	for _, k := range f.kills {
		if k.pid == pid {
			out = append(out, k)
		}
	}
	return out
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type harness struct {
	t    *testing.T
	os   *fakeOS
	log  *syncBuffer
	done chan error
	s    *Supervisor
	// execs asks the loop, at its next Heartbeat, for a Snapshot; the loop
	// then stops for good, as an execve would end it.
	execs chan chan State
	// frozen is set once the loop has stopped so.
	frozen atomic.Bool

	mu     sync.Mutex
	events []timedEvent
}

type timedEvent struct {
	Event
	at time.Time
}

// start runs a supervisor on the fake OS; cfg.Command defaults to /bin/sh.
func start(t *testing.T, cfg Config, prepare ...func(*fakeOS)) *harness {
	t.Helper()
	h := newHarness(t, newFakeOS(), &syncBuffer{})
	for _, p := range prepare {
		p(h.os)
	}
	s, err := New(h.configure(cfg))
	if err != nil {
		t.Fatal(err)
	}
	h.run(s)
	return h
}

func newHarness(t *testing.T, f *fakeOS, log *syncBuffer) *harness {
	return &harness{t: t, os: f, log: log, done: make(chan error, 1), execs: make(chan chan State)}
}

// configure gives cfg the harness's log and an Observer that records every
// event and takes the snapshots exec asks for.
func (h *harness) configure(cfg Config) Config {
	if cfg.Command == nil {
		cfg.Command = []string{"/bin/sh"}
	}
	cfg.Log = h.log
	user := cfg.Observer
	cfg.Observer = func(e Event) {
		h.mu.Lock()
		h.events = append(h.events, timedEvent{e, time.Now()})
		h.mu.Unlock()
		if user != nil {
			user(e)
		}
		if e.Kind != Heartbeat {
			return
		}
		select {
		case reply := <-h.execs:
			h.frozen.Store(true)
			reply <- h.s.Snapshot()
			select {} // the image is gone
		default:
		}
	}
	return cfg
}

func (h *harness) run(s *Supervisor) {
	h.s = s
	s.sys = h.os.sys()
	sigs := Signals{Stop: h.os.stop, Reload: h.os.reload, Child: h.os.child, Scale: h.os.scale}
	go func() {
		h.done <- s.Run(sigs)
	}()
	h.t.Cleanup(func() {
		if h.frozen.Load() {
			return
		}
		h.os.deliver(syscall.SIGTERM)
		// Let every worker the fake OS still has exit, so that Run returns.
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			h.os.mu.Lock()
			var pids []int
			for pid := range h.os.alive {
				pids = append(pids, pid)
			}
			h.os.mu.Unlock()
			for _, pid := range pids {
				h.os.exit(pid, 0)
			}
			select {
			case <-h.done:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		h.t.Errorf("supervisor did not stop; log:\n%s", h.log)
	})
}

func (h *harness) signal(sig os.Signal) { h.os.deliver(sig) }

// deliver puts sig on its channel, or drops it when the channel is full, as
// os/signal does.
func (f *fakeOS) deliver(sig os.Signal) {
	ch := f.reload
	switch sig {
	case syscall.SIGTERM, syscall.SIGINT:
		ch = f.stop
	case syscall.SIGCHLD:
		ch = f.child
	case syscall.SIGTTIN, syscall.SIGTTOU:
		ch = f.scale
	}
	select {
	case ch <- sig:
	default:
	}
}

// waitFor polls cond until it holds or a few seconds pass.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s; log:\n%s", what, h.log)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *harness) waitLog(line string) {
	h.t.Helper()
	h.waitFor("log line "+line, func() bool { return strings.Contains(h.log.String(), line+"\n") })
}

func (h *harness) spawnCount() int { return len(h.os.spawned()) }

func TestHUPDuringRestartCausesExactlyOneMoreRestart(t *testing.T) {
	h := start(t, Config{Interval: 150 * time.Millisecond})
	h.signal(syscall.SIGHUP) // during the first start
	h.waitLog("starting new worker 102")
	h.signal(syscall.SIGHUP) // during a restart
	h.signal(syscall.SIGHUP)
	h.signal(syscall.SIGHUP)
	h.waitFor("three workers", func() bool { return h.spawnCount() == 3 })
	time.Sleep(500 * time.Millisecond)
	if n := h.spawnCount(); n != 3 {
		t.Fatalf("HUPs during starts gave %d starts, want 3 (first, one restart after each start):\n%s", n, h.log)
	}
	if ks := h.os.killsOf(101); len(ks) != 1 || ks[0].sig != syscall.SIGTERM {
		t.Fatalf("generation 1 was sent %v, want one TERM", ks)
	}
	if ks := h.os.killsOf(102); len(ks) != 1 || ks[0].sig != syscall.SIGTERM {
		t.Fatalf("generation 2 was sent %v, want one TERM", ks)
	}
	if got := strings.Count(h.log.String(), "received HUP, spawning a new worker\n"); got != 2 {
		t.Fatalf("logged %d HUP restarts, want 2:\n%s", got, h.log)
	}
}

func TestTERMDuringKillOldDelayIsPrompt(t *testing.T) {
	h := start(t, Config{Interval: 0, Env: []string{"KILL_OLD_DELAY=30"}})
	h.waitLog("starting new worker 101")
	h.signal(syscall.SIGHUP)
	h.waitLog("sleeping 30 secs before killing old workers")
	sent := time.Now()
	h.signal(syscall.SIGTERM)
	h.waitLog("received TERM, sending TERM to all workers:101,102")
	for _, pid := range []int{101, 102} {
		ks := h.os.killsOf(pid)
		if len(ks) != 1 || ks[0].sig != syscall.SIGTERM || ks[0].at.Sub(sent) > 200*time.Millisecond {
			t.Fatalf("worker %d got %v, want TERM at once", pid, ks)
		}
	}
	h.os.exit(101, 0)
	h.os.exit(102, 0)
	select {
	case err := <-h.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatalf("did not exit after its workers:\n%s", h.log)
	}
	if !strings.HasSuffix(h.log.String(), "worker 102 died, status:0\nexiting\n") {
		t.Fatalf("log does not end with the deaths and exiting:\n%s", h.log)
	}
	h.done <- nil // for the cleanup
}

func TestTERMDuringStartIsPrompt(t *testing.T) {
	h := start(t, Config{Interval: 30 * time.Second})
	h.waitLog("starting new worker 101")
	h.signal(syscall.SIGTERM)
	h.waitLog("received TERM, sending TERM to all workers:101")
}

func TestINTSendsTERMWhateverSignalOnTERM(t *testing.T) {
	h := start(t, Config{SignalOnTERM: syscall.SIGQUIT})
	h.waitLog("starting new worker 101")
	h.signal(syscall.SIGINT)
	h.waitLog("received INT, sending TERM to all workers:101")
	if ks := h.os.killsOf(101); len(ks) != 1 || ks[0].sig != syscall.SIGTERM {
		t.Fatalf("got %v", ks)
	}
}

func TestFailingStartsBackOff(t *testing.T) {
	h := start(t, Config{Interval: 0, MaxBackoff: 400 * time.Millisecond}, func(f *fakeOS) { f.dieOnStart = true })
	time.Sleep(1500 * time.Millisecond)
	spawns := h.os.spawned()
	// Retries after 0.1, 0.2, 0.4, 0.4, 0.4 s: about 6 in 1.5 s. 0.35 would
	// have started one every --interval, here in a tight loop.
	if len(spawns) < 4 || len(spawns) > 8 {
		t.Fatalf("%d starts in 1.5 s, want 4-8:\n%s", len(spawns), h.log)
	}
	for i := 4; i < len(spawns); i++ {
		if gap := spawns[i].at.Sub(spawns[i-1].at); gap < 350*time.Millisecond {
			t.Fatalf("gap %v between start %d and %d is below the cap", gap, i, i+1)
		}
	}
	if !strings.Contains(h.log.String(), "new worker 101 seems to have failed to start, exit status:768\n") {
		t.Fatalf("missing 0.35's failure line:\n%s", h.log)
	}
}

func TestOldGenerationKeepsServingWhileNewOneFails(t *testing.T) {
	h := start(t, Config{Interval: 50 * time.Millisecond})
	h.waitLog("starting new worker 101")
	h.os.mu.Lock()
	h.os.dieOnStart = true
	h.os.mu.Unlock()
	h.signal(syscall.SIGHUP)
	h.waitFor("three failed starts", func() bool { return h.spawnCount() >= 4 })
	if ks := h.os.killsOf(101); len(ks) != 0 {
		t.Fatalf("old generation was signalled %v while no new one had started", ks)
	}
	// A HUP while waiting to retry retries at once.
	h.os.mu.Lock()
	h.os.dieOnStart = false
	h.os.mu.Unlock()
	n := h.spawnCount()
	h.signal(syscall.SIGHUP)
	h.waitFor("a retry", func() bool { return h.spawnCount() == n+1 })
	h.waitFor("the old generation signalled", func() bool { return len(h.os.killsOf(101)) == 1 })
}

func TestKillTimeoutEscalates(t *testing.T) {
	h := start(t, Config{Interval: 0, KillTimeout: 200 * time.Millisecond})
	h.waitLog("starting new worker 101")
	h.signal(syscall.SIGHUP)
	h.waitFor("SIGKILL", func() bool { return len(h.os.killsOf(101)) == 2 })
	ks := h.os.killsOf(101)
	if ks[0].sig != syscall.SIGTERM || ks[1].sig != syscall.SIGKILL {
		t.Fatalf("got %v, want TERM then KILL", ks)
	}
	if d := ks[1].at.Sub(ks[0].at); d < 180*time.Millisecond || d > time.Second {
		t.Fatalf("KILL came %v after TERM, want about 200ms", d)
	}
}

func TestAutoRestart(t *testing.T) {
	h := start(t, Config{Interval: 0, Env: []string{"ENABLE_AUTO_RESTART=1", "AUTO_RESTART_INTERVAL=0.3", "KILL_OLD_DELAY=0"}})
	h.waitLog("autorestart triggered (interval=0.3)")
	h.waitFor("the old one signalled", func() bool { return len(h.os.killsOf(101)) == 1 })
	// With the old generation alive, the next one waits for twice the interval.
	h.waitLog("autorestart triggered (forced, interval=0.3)")
}

func TestEnvDirSetsAndUnsets(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "FOO"), []byte("bar\nsecond line\n"), 0o644)
	os.WriteFile(filepath.Join(dir, ".hidden"), []byte("x\n"), 0o644)
	h := start(t, Config{Interval: 0, Env: []string{"ENVDIR=" + dir, "KEEP=1"}, PortEnv: "80=3"})
	h.waitLog("starting new worker 101")
	env := newEnvironment(h.os.spawned()[0].env)
	if env["FOO"] != "bar" || env["KEEP"] != "1" || env[".hidden"] != "" ||
		env["SERVER_STARTER_PORT"] != "80=3" || env["SERVER_STARTER_GENERATION"] != "1" {
		t.Fatalf("first worker's environment: %v", env)
	}
	os.Remove(filepath.Join(dir, "FOO"))
	h.signal(syscall.SIGHUP)
	h.waitLog("starting new worker 102")
	env = newEnvironment(h.os.spawned()[1].env)
	if _, ok := env["FOO"]; ok || env["SERVER_STARTER_GENERATION"] != "2" {
		t.Fatalf("second worker's environment: %v", env)
	}
}

func TestStatusFileIsInNumericOrder(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status")
	if err := writeStatusFile(path, map[int]int{10: 5, 9: 7, 100: 1}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if string(b) != "9:7\n10:5\n100:1\n" {
		t.Fatalf("status file is %q", b)
	}
}

func TestStatusFileFollowsGenerations(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status")
	h := start(t, Config{Interval: 0, StatusFile: path, Env: []string{"KILL_OLD_DELAY=0.3"}})
	read := func() string { b, _ := os.ReadFile(path); return string(b) }
	h.waitFor("first generation", func() bool { return read() == "1:101\n" })
	h.signal(syscall.SIGHUP)
	h.waitFor("both generations", func() bool { return read() == "1:101\n2:102\n" })
	h.waitFor("old one signalled", func() bool { return len(h.os.killsOf(101)) == 1 })
	h.os.exit(101, 0)
	h.waitFor("second generation only", func() bool { return read() == "2:102\n" })
}

func TestParseSignal(t *testing.T) {
	for name, want := range map[string]syscall.Signal{"TERM": syscall.SIGTERM, "sigusr1": syscall.SIGUSR1, "Hup": syscall.SIGHUP, "SIGQUIT": syscall.SIGQUIT} {
		if got, err := ParseSignal(name); err != nil || got != want {
			t.Errorf("ParseSignal(%q) = %v, %v", name, got, err)
		}
	}
	for _, bad := range []string{"", "FOO", "SIG", "9x"} {
		if _, err := ParseSignal(bad); err == nil {
			t.Errorf("ParseSignal(%q) succeeded", bad)
		}
	}
}

func TestSummaryNamesWhatServes(t *testing.T) {
	var mu sync.Mutex
	var last string
	observe := func(e Event) { mu.Lock(); last = e.Summary; mu.Unlock() }
	summary := func() string { mu.Lock(); defer mu.Unlock(); return last }
	h := start(t, Config{Interval: 50 * time.Millisecond, Observer: observe})
	h.waitFor("serving", func() bool { return summary() == "generation 1 (pid 101) serving" })
	h.os.mu.Lock()
	h.os.dieOnStart = true
	h.os.mu.Unlock()
	h.signal(syscall.SIGHUP)
	h.waitFor("a failed start", func() bool {
		return summary() == "generation 2 failed to start, retrying; generation 1 (pid 101) still serving"
	})
	h.os.mu.Lock()
	h.os.dieOnStart = false
	h.os.mu.Unlock()
	h.signal(syscall.SIGHUP)
	h.waitFor("the new one serving", func() bool {
		return strings.HasPrefix(summary(), "generation 3 (pid 10") && strings.HasSuffix(summary(), ") serving; 1 old generation draining")
	})
}

// A swarm of orphans exiting costs a log line and a count, not a line each.
func TestOrphanExitsAreLoggedWithACount(t *testing.T) {
	h := start(t, Config{Interval: 10 * time.Millisecond})
	h.waitLog("starting new worker 101")
	for i := range 1000 {
		h.os.mu.Lock()
		h.os.exits = append(h.os.exits, exitRecord{pid: 5000 + i})
		h.os.mu.Unlock()
		h.os.deliver(syscall.SIGCHLD)
	}
	h.waitLog("process 5004 (not a worker) exited, status:0")
	h.signal(syscall.SIGTERM)
	h.waitLog("received TERM, sending TERM to all workers:101")
	h.os.exit(101, 0)
	if err := <-h.done; err != nil {
		t.Fatal(err)
	}
	h.done <- nil // for the cleanup
	log := h.log.String()
	if n := strings.Count(log, "(not a worker) exited"); n != ratelog.DefaultBurst {
		t.Errorf("%d lines for orphans' exits, want %d:\n%s", n, ratelog.DefaultBurst, log)
	}
	if !strings.Contains(log, "... and 995 more processes that were not workers exited\n") {
		t.Errorf("no count of the other 995:\n%s", log)
	}
}

// A worker given up on for not sending READY=1 in time is a failed start
// when it exits, not an old generation dying.
func TestWorkerNotReadyInTimeExitsAsAFailedStart(t *testing.T) {
	h := start(t, Config{ReadyByNotify: true, ReadyTimeout: 50 * time.Millisecond, NotifyDir: t.TempDir()})
	h.waitLog("new worker 101 did not report ready within 0.05s")
	h.waitFor("TERM to worker 101", func() bool { return len(h.os.killsOf(101)) == 1 })
	h.os.exit(101, 0)
	h.waitLog("new worker 101 seems to have failed to start, exit status:0")
	if strings.Contains(h.log.String(), "old worker 101 died") {
		t.Errorf("the worker that failed to start is logged as an old one:\n%s", h.log)
	}
}

// --worker-watchdog alone gives workers the NOTIFY_SOCKET their WATCHDOG=1
// needs.
func TestWorkerWatchdogGivesWorkersANotifySocket(t *testing.T) {
	h := start(t, Config{WorkerWatchdog: time.Second, NotifyDir: t.TempDir()})
	h.waitLog("starting new worker 101")
	env := "\n" + strings.Join(h.os.spawned()[0].env, "\n") + "\n"
	if !strings.Contains(env, "\nNOTIFY_SOCKET=/") || !strings.Contains(env, "\nWATCHDOG_USEC=1000000\n") {
		t.Errorf("worker environment lacks NOTIFY_SOCKET or WATCHDOG_USEC:\n%s", env)
	}
}

// A worker flooding STATUS= reaches the loop a few times a second, and its
// last status, and every other message, in order.
func TestStatusFloodIsCoalesced(t *testing.T) {
	s, err := New(Config{Command: []string{"/bin/sh"}})
	if err != nil {
		t.Fatal(err)
	}
	in := make(chan notify.Message)
	go s.forward(42, in)
	status := func(text string) notify.Message {
		return notify.Message{PID: 42, Status: text, Fields: map[string]string{"STATUS": text}}
	}
	var got []notify.Message
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		for m := range s.messages {
			got = append(got, m.msg)
			if m.msg.Stopping {
				return
			}
		}
	}()
	begin := time.Now()
	for i := range 20000 {
		in <- status(fmt.Sprint("busy ", i))
	}
	in <- notify.Message{PID: 42, Ready: true, Fields: map[string]string{"READY": "1"}}
	in <- status("last")
	in <- notify.Message{PID: 42, Stopping: true, Fields: map[string]string{"STOPPING": "1"}}
	<-collected
	close(in)
	took := time.Since(begin)

	var texts []string
	for _, m := range got {
		switch {
		case m.Ready:
			texts = append(texts, "READY")
		case m.Stopping:
			texts = append(texts, "STOPPING")
		default:
			texts = append(texts, m.Status)
		}
	}
	if max := 5 + int(took/statusEvery); len(got) > max {
		t.Errorf("the loop got %d messages in %v, want at most %d", len(got), took, max)
	}
	n := len(texts)
	if n < 4 || texts[0] != "busy 0" || texts[n-4] != "busy 19999" || texts[n-3] != "READY" || texts[n-2] != "last" || texts[n-1] != "STOPPING" {
		t.Errorf("the loop got %q", texts)
	}
}
