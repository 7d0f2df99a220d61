package supervisor

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/ss-bridge/ss-bridge/notify"
)

// exec takes a Snapshot in h's loop at its next Heartbeat (Config.Heartbeat
// must be set), after which that loop stops for good, as an execve would
// end it.
func (h *harness) exec() State {
	h.t.Helper()
	reply := make(chan State)
	select {
	case h.execs <- reply:
	case <-time.After(5 * time.Second):
		h.t.Fatalf("the loop took no snapshot; log:\n%s", h.log)
	}
	return <-reply
}

// resume carries on from st, through its JSON encoding, in a new supervisor
// on the same fake OS and log. The new one has signal channels of its own:
// what the old image had not taken is lost.
func (h *harness) resume(cfg Config, st State) *harness {
	h.t.Helper()
	data, err := json.Marshal(st)
	if err != nil {
		h.t.Fatal(err)
	}
	var decoded State
	if err := json.Unmarshal(data, &decoded); err != nil {
		h.t.Fatal(err)
	}
	f := h.os
	f.mu.Lock()
	f.stop, f.reload, f.child, f.scale = make(chan os.Signal, 2), make(chan os.Signal, 1), make(chan os.Signal, 1), make(chan os.Signal, 64)
	f.mu.Unlock()
	n := newHarness(h.t, f, h.log)
	s, err := Restore(n.configure(cfg), decoded)
	if err != nil {
		h.t.Fatal(err)
	}
	n.run(s)
	return n
}

// exitUnnoticed makes a worker exit with no SIGCHLD, as one does during an
// execve.
func (f *fakeOS) exitUnnoticed(pid int, status syscall.WaitStatus) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.alive, pid)
	f.exits = append(f.exits, exitRecord{pid, status})
}

// event returns when the first event of kind for generation gen came.
func (h *harness) event(kind EventKind, gen int) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, e := range h.events {
		if e.Kind == kind && e.Generation == gen {
			return e.at, true
		}
	}
	return time.Time{}, false
}

func (h *harness) waitEvent(kind EventKind, gen int) time.Time {
	h.t.Helper()
	var at time.Time
	h.waitFor(fmt.Sprintf("event %d of generation %d", kind, gen), func() bool {
		t, ok := h.event(kind, gen)
		at = t
		return ok
	})
	return at
}

// A restart snapshotted twice, with a HUP pending throughout: first while
// the new worker is starting, then while the old one waits for its
// KILL_OLD_DELAY. Each deadline fires when it would have without the execs,
// not later by the time they took; the restart completes, and the pending
// HUP makes exactly one more.
func TestResumeMidRestartCarriesOn(t *testing.T) {
	const interval, killOldDelay, frozen = 1500 * time.Millisecond, time.Second, 300 * time.Millisecond
	cfg := Config{Interval: interval, Heartbeat: 10 * time.Millisecond, Env: []string{"KILL_OLD_DELAY=1"}}
	h := start(t, cfg)
	h.waitEvent(Started, 1)
	h.signal(syscall.SIGHUP)
	h.waitLog("starting new worker 102")
	spawned := h.os.spawned()[1].at
	h.signal(syscall.SIGHUP)
	time.Sleep(200 * time.Millisecond) // for the loop to take it

	st := h.exec()
	if !st.HUPPending || !st.Restarting || st.Generation != 2 || st.Deadlines.Ready == 0 || len(st.Workers) != 2 ||
		st.Workers[0].Role != Starting || st.Workers[0].PID != 102 || st.Workers[1].Role != Old || st.Workers[1].PID != 101 {
		t.Fatalf("snapshot during the start: %+v", st)
	}
	time.Sleep(frozen)
	h2 := h.resume(cfg, st)
	startedAt := h2.waitEvent(Started, 2)
	if d := startedAt.Sub(spawned); d < interval-50*time.Millisecond || d > interval+frozen-50*time.Millisecond {
		t.Fatalf("generation 2 counted as started %v after its start, want %v", d, interval)
	}
	h2.waitLog("sleeping 1 secs before killing old workers")
	if n := len(h.os.killsOf(101)); n != 0 {
		t.Fatalf("old worker signalled during KILL_OLD_DELAY: %v", h.os.killsOf(101))
	}

	st = h2.exec()
	if !st.HUPPending || st.Restarting || st.Deadlines.KillOld == 0 || st.Deadlines.Ready != 0 || len(st.Workers) != 2 ||
		st.Workers[0].PID != 102 || st.Workers[0].Role != Current || st.Workers[1].PID != 101 || st.Workers[1].Role != Old {
		t.Fatalf("snapshot during KILL_OLD_DELAY: %+v", st)
	}
	time.Sleep(frozen)
	h3 := h2.resume(cfg, st)
	h3.waitFor("TERM to the old worker", func() bool { return len(h.os.killsOf(101)) == 1 })
	if k := h.os.killsOf(101)[0]; k.sig != syscall.SIGTERM || k.at.Sub(startedAt) < killOldDelay-50*time.Millisecond ||
		k.at.Sub(startedAt) > killOldDelay+frozen-50*time.Millisecond {
		t.Fatalf("old worker got %v %v after generation 2 started, want TERM after %v", k.sig, k.at.Sub(startedAt), killOldDelay)
	}
	h3.waitLog("starting new worker 103")
	time.Sleep(interval + killOldDelay + 500*time.Millisecond)
	spawns := h.os.spawned()
	if len(spawns) != 3 {
		t.Fatalf("%d workers started, want 3:\n%s", len(spawns), h.log)
	}
	if env := newEnvironment(spawns[2].env); env["SERVER_STARTER_GENERATION"] != "3" {
		t.Fatalf("the restart after the execs is generation %s, want 3", env["SERVER_STARTER_GENERATION"])
	}
	if got := strings.Count(h.log.String(), "received HUP, spawning a new worker\n"); got != 2 {
		t.Fatalf("logged %d HUP restarts, want 2 (the HUP, the pending one):\n%s", got, h.log)
	}
	if ks := h.os.killsOf(102); len(ks) != 1 || ks[0].sig != syscall.SIGTERM {
		t.Fatalf("generation 2 got %v once generation 3 started, want one TERM", ks)
	}
}

// The old image may exec in the turn of its loop that changed the status
// file, before writing it: the resumed supervisor writes it first thing.
func TestResumeWritesTheStatusFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status")
	read := func() string { b, _ := os.ReadFile(path); return string(b) }
	cfg := Config{Interval: 0, Heartbeat: 10 * time.Millisecond, StatusFile: path}
	h := start(t, cfg)
	h.waitFor("first generation", func() bool { return read() == "1:101\n" })
	st := h.exec()
	if err := os.WriteFile(path, []byte("1:999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.resume(cfg, st)
	h.waitFor("the status file rewritten", func() bool { return read() == "1:101\n" })
}

// A worker that exits during the exec sends a SIGCHLD nobody takes; the
// resumed supervisor reaps it first thing, and reports it.
func TestResumeReapsWorkerThatExitedDuringExec(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status")
	read := func() string { b, _ := os.ReadFile(path); return string(b) }
	cfg := Config{Interval: 0, Heartbeat: 10 * time.Millisecond, StatusFile: path, Env: []string{"KILL_OLD_DELAY=0"}}
	h := start(t, cfg)
	h.waitFor("first generation", func() bool { return read() == "1:101\n" })
	h.signal(syscall.SIGHUP)
	h.waitFor("both generations", func() bool { return read() == "1:101\n2:102\n" })
	h.waitFor("the old one signalled", func() bool { return len(h.os.killsOf(101)) == 1 })
	st := h.exec()
	h.os.exitUnnoticed(101, 0)
	h2 := h.resume(cfg, st)
	h2.waitLog("old worker 101 died, status:0")
	h2.waitEvent(Exited, 1)
	h2.waitFor("the status file without it", func() bool { return read() == "2:102\n" })
	if n := h.spawnCount(); n != 2 {
		t.Fatalf("%d workers started, want 2: the resume started one", n)
	}
}

// readStateFixture decodes testdata/NAME.json, a state as an earlier release wrote it.
func readStateFixture(t *testing.T, name string) State {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name + ".json")
	if err != nil {
		t.Fatal(err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// A state a later ss-bridge wrote as version 1 still decodes to what it
// meant, and a supervisor carries on from it.
func TestStateV1GoldenFileDecodes(t *testing.T) {
	st := readStateFixture(t, "state-v1")
	want := State{
		Version: 1, MonoNS: 812345678901, Generation: 7, Failures: 2, Restarting: true, HUPPending: true,
		StatusMade: true, EverReady: true, LastStartNS: 812000000000,
		Deadlines: Deadlines{Ready: 812350000000, Beat: 812345688901},
		Workers: []WorkerState{
			{PID: 2001, Gen: 6, Role: Current, StartedNS: 811000000000, WatchdogAtNS: 812346000000, Status: "serving 12 clients",
				Notify: &NotifyState{FD: 12, Path: "/tmp/notify-1234/0123456789abcdef.sock"}},
			{PID: 2002, Gen: 7, Role: Starting, StartedNS: 812300000000},
			{PID: 1990, Gen: 5, Role: Old, StartedNS: 800000000000, Sent: 15, KillAtNS: 812400000000, Status: "draining"},
		},
	}
	if !reflect.DeepEqual(st, want) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", st, want)
	}
	// Descriptor 12 is not a notify socket in this process.
	if _, err := Restore(Config{Command: []string{"/bin/sh"}}, st); err == nil || !strings.Contains(err.Error(), "restore worker 2001") {
		t.Fatalf("restored with a notify socket that is not there: %v", err)
	}
	st.Workers[0].Notify = nil
	s, err := Restore(Config{Command: []string{"/bin/sh"}}, st)
	if err != nil {
		t.Fatal(err)
	}
	if s.generation != 7 || s.current.pid != 2001 || s.starting.pid != 2002 || s.old[1990].sent != syscall.SIGTERM ||
		!s.hupPending || !s.restarting || s.failures != 2 || s.current.status != "serving 12 clients" {
		t.Fatalf("restored %+v", s.loopState)
	}
	// Times keep their distances, whatever CLOCK_MONOTONIC is here.
	if d := s.readyAt.Sub(s.starting.started); d != 50*time.Millisecond {
		t.Fatalf("ready deadline %v after the start, want 50ms", d)
	}
	if d := s.old[1990].killAt.Sub(s.lastStart); d != 400*time.Millisecond {
		t.Fatalf("kill deadline %v after the last start, want 400ms", d)
	}
}

// A pool's state, as version 2 wrote it, still decodes to what it meant.
func TestStateV2GoldenFileDecodes(t *testing.T) {
	st := readStateFixture(t, "state-v2")
	want := State{
		Version: 2, MonoNS: 812345678901, Generation: 7, EverReady: true, StatusMade: true, LastStartNS: 812000000000,
		Pool: &PoolState{Gen: 6, RollGen: 7, Slots: []SlotState{{}, {RetryNS: 812400000000, Failures: 1}, {}}},
		Workers: []WorkerState{
			{PID: 1990, Gen: 6, Role: Old, StartedNS: 800000000000, Sent: 15, SignalAtNS: 0},
			{PID: 2001, Gen: 7, Role: SlotServing, StartedNS: 812300000000},
			{PID: 2002, Gen: 6, Role: SlotServing, StartedNS: 811000000000, Slot: 2},
			{PID: 2003, Gen: 7, Role: SlotStarting, StartedNS: 812340000000, Slot: 2, ReadyAtNS: 812350000000},
		},
	}
	if !reflect.DeepEqual(st, want) {
		t.Fatalf("decoded\n%+v\nwant\n%+v", st, want)
	}
	s, err := Restore(Config{Command: []string{"/bin/sh"}, Workers: 1}, st)
	if err != nil {
		t.Fatal(err)
	}
	p := s.pool
	if len(p.slots) != 3 || p.gen != 6 || p.rollGen != 7 || p.slots[0].cur.pid != 2001 || p.slots[1].cur != nil ||
		p.slots[1].failures != 1 || p.slots[2].cur.pid != 2002 || p.slots[2].next.pid != 2003 || s.old[1990] == nil {
		t.Fatalf("restored %+v", p)
	}
	if d := p.slots[2].next.readyAt.Sub(p.slots[2].next.started); d != 10*time.Millisecond {
		t.Fatalf("ready deadline %v after the start, want 10ms", d)
	}
}

func TestStateVersions(t *testing.T) {
	for _, v := range []int{0, StateVersion + 1} {
		var st State
		err := json.Unmarshal(fmt.Appendf(nil, `{"version":%d,"generation":1}`, v), &st)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("version %d", v)) {
			t.Errorf("version %d: %v", v, err)
		}
	}
	// Embedded in a larger document, as the service will hand it over.
	var doc struct{ Supervisor State }
	if err := json.Unmarshal([]byte(`{"Supervisor":{"version":99}}`), &doc); err == nil {
		t.Error("an embedded state of version 99 was accepted")
	}
	// Additions within a version are ignored.
	var st State
	if err := json.Unmarshal([]byte(`{"version":1,"generation":3,"future":{"x":1},"workers":[{"pid":5,"role":"old","later":true}]}`), &st); err != nil {
		t.Fatal(err)
	}
	if st.Generation != 3 || len(st.Workers) != 1 || st.Workers[0].PID != 5 {
		t.Fatalf("decoded %+v", st)
	}
}

func TestRestoreRefusesInconsistentStates(t *testing.T) {
	ok := State{Version: 1, Generation: 2, Deadlines: Deadlines{Ready: 1}}
	w := func(pid int, role Role) WorkerState { return WorkerState{PID: pid, Gen: 1, Role: role} }
	for name, st := range map[string]State{
		"no generation":         {Version: 1},
		"version 3":             {Version: 3, Generation: 1},
		"a pool in version 1":   {Version: 1, Generation: 1, Pool: &PoolState{Slots: []SlotState{{}}}},
		"a pool without slots":  {Version: 2, Generation: 1, Pool: &PoolState{}},
		"a slot without a pool": with(ok, WorkerState{PID: 5, Gen: 1, Role: SlotServing}),
		"a slot out of range": with(State{Version: 2, Generation: 1, Pool: &PoolState{Slots: []SlotState{{}}}},
			WorkerState{PID: 5, Gen: 1, Role: SlotServing, Slot: 1}),
		"two serving in a slot": with(State{Version: 2, Generation: 1, Pool: &PoolState{Slots: []SlotState{{}}}},
			WorkerState{PID: 5, Gen: 1, Role: SlotServing}, WorkerState{PID: 6, Gen: 1, Role: SlotServing}),
		"slot starting without timer": with(State{Version: 2, Generation: 1, Pool: &PoolState{Slots: []SlotState{{}}}},
			WorkerState{PID: 5, Gen: 1, Role: SlotStarting}),
		"a pid twice":            with(ok, w(5, Old), w(5, Current)),
		"two serving":            with(ok, w(5, Current), w(6, Current)),
		"two starting":           with(ok, w(5, Starting), w(6, Starting)),
		"an unknown role":        with(ok, w(5, "leader")),
		"pid 0":                  with(ok, w(0, Old)),
		"starting without timer": with(State{Version: 1, Generation: 2}, w(5, Starting)),
	} {
		if _, err := Restore(Config{Command: []string{"/bin/sh"}}, st); err == nil {
			t.Errorf("%s: restored", name)
		}
	}
	if _, err := Restore(Config{Command: []string{"/bin/sh"}}, with(ok, w(5, Starting), w(6, Current), w(7, Old), w(8, Old))); err != nil {
		t.Errorf("a consistent state: %v", err)
	}
	pool := State{Version: 2, Generation: 3, Pool: &PoolState{Gen: 2, RollGen: 3, Slots: []SlotState{{}, {}}}}
	if _, err := Restore(Config{Command: []string{"/bin/sh"}}, with(pool,
		WorkerState{PID: 5, Gen: 2, Role: SlotServing}, WorkerState{PID: 6, Gen: 3, Role: SlotStarting, ReadyAtNS: 1},
		WorkerState{PID: 7, Gen: 3, Role: SlotServing, Slot: 1}, w(8, Old))); err != nil {
		t.Errorf("a consistent pool: %v", err)
	}
}

func with(st State, workers ...WorkerState) State {
	st.Workers = workers
	return st
}

// Everything in loopState survives Snapshot, JSON and Restore. The sample
// sets every field, and the test fails on a field it does not set, so a
// field added to loopState or worker must be set here, and then carried.
func TestStateRoundTripCarriesEveryField(t *testing.T) {
	ns, err := notify.Listen(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	now := time.Now()
	at := func(ms int) time.Time { return now.Add(time.Duration(ms) * time.Millisecond) }
	sample := loopState{
		generation: 9,
		current: &worker{pid: 11, gen: 8, started: at(-5000), sent: syscall.SIGUSR1, killAt: at(100), notify: ns,
			status: "fine", watchdogAt: at(200), failedStart: true, slot: 1, readyAt: at(203), signalAt: at(204)},
		starting: &worker{pid: 12, gen: 9, started: at(-10), sent: syscall.SIGTERM, killAt: at(101), status: "warming",
			watchdogAt: at(201), failedStart: true},
		old: map[int]*worker{10: {pid: 10, gen: 7, started: at(-9000), sent: syscall.SIGQUIT, killAt: at(102),
			status: "draining", watchdogAt: at(202), failedStart: true}},
		readyAt:    at(300),
		retryAt:    at(301),
		failures:   3,
		restarting: true,
		killOldAt:  at(302),
		hupPending: true,
		stopping:   true,
		lastStart:  at(-4000),
		autoAt:     at(303),
		statusMade: true,
		everReady:  true,
		beatAt:     at(304),
		pool: &pool{gen: 8, rollGen: 9, slots: []*slot{
			{cur: &worker{pid: 13, gen: 8, started: at(-3000), status: "slot 0"},
				next:    &worker{pid: 14, gen: 9, started: at(-5), readyAt: at(305)},
				retryAt: at(306), failures: 1},
			{cur: &worker{pid: 15, gen: 9, started: at(-2000), slot: 1}, failures: 2},
		}},
	}
	for _, v := range []reflect.Value{reflect.ValueOf(sample), reflect.ValueOf(*sample.current),
		reflect.ValueOf(*sample.pool), reflect.ValueOf(*sample.pool.slots[0])} {
		for i := range v.NumField() {
			if v.Field(i).IsZero() {
				t.Errorf("the sample leaves %s.%s zero: set it, and carry it in State", v.Type().Name(), v.Type().Field(i).Name)
			}
		}
	}

	cfg := Config{Command: []string{"/bin/sh"}}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.loopState = sample
	data, err := json.Marshal(s.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	r, err := Restore(cfg, st)
	if err != nil {
		t.Fatal(err)
	}
	defer r.current.notify.Release()
	if !r.restored {
		t.Error("Restore did not mark the supervisor restored")
	}
	// The clocks are read twice, microseconds apart.
	if diff := compare(reflect.ValueOf(&sample).Elem(), reflect.ValueOf(&r.loopState).Elem(), "loopState"); diff != "" {
		t.Errorf("%s\nstate: %s", diff, data)
	}
}

// compare reports the first difference between two values of loopState's
// types, unexported fields included; times may differ by a millisecond,
// and notify sockets are compared by path.
func compare(a, b reflect.Value, path string) string {
	if a.CanAddr() && !a.CanInterface() {
		a = reflect.NewAt(a.Type(), unsafe.Pointer(a.UnsafeAddr())).Elem()
		b = reflect.NewAt(b.Type(), unsafe.Pointer(b.UnsafeAddr())).Elem()
	}
	switch x := a.Interface().(type) {
	case time.Time:
		y := b.Interface().(time.Time)
		if x.IsZero() != y.IsZero() || x.Sub(y).Abs() > time.Millisecond {
			return fmt.Sprintf("%s: %v, restored %v", path, x, y)
		}
		return ""
	case *notify.WorkerSocket:
		y := b.Interface().(*notify.WorkerSocket)
		if (x == nil) != (y == nil) || x != nil && x.Path() != y.Path() {
			return fmt.Sprintf("%s: notify socket %v, restored %v", path, x, y)
		}
		return ""
	}
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() != b.IsNil() {
			return fmt.Sprintf("%s: nil-ness differs", path)
		}
		if a.IsNil() {
			return ""
		}
		return compare(a.Elem(), b.Elem(), "*"+path)
	case reflect.Map:
		if a.Len() != b.Len() {
			return fmt.Sprintf("%s: %d entries, restored %d", path, a.Len(), b.Len())
		}
		for _, k := range a.MapKeys() {
			bv := b.MapIndex(k)
			if !bv.IsValid() {
				return fmt.Sprintf("%s[%v] missing", path, k)
			}
			// Map values are not addressable: copy them into variables.
			av2, bv2 := reflect.New(a.Type().Elem()).Elem(), reflect.New(a.Type().Elem()).Elem()
			av2.Set(a.MapIndex(k))
			bv2.Set(bv)
			if d := compare(av2, bv2, fmt.Sprintf("%s[%v]", path, k)); d != "" {
				return d
			}
		}
		return ""
	case reflect.Slice:
		if a.Len() != b.Len() {
			return fmt.Sprintf("%s: %d elements, restored %d", path, a.Len(), b.Len())
		}
		for i := range a.Len() {
			if d := compare(a.Index(i), b.Index(i), fmt.Sprintf("%s[%d]", path, i)); d != "" {
				return d
			}
		}
		return ""
	case reflect.Struct:
		for i := range a.NumField() {
			if d := compare(a.Field(i), b.Field(i), path+"."+a.Type().Field(i).Name); d != "" {
				return d
			}
		}
		return ""
	}
	if !reflect.DeepEqual(a.Interface(), b.Interface()) {
		return fmt.Sprintf("%s: %v, restored %v", path, a.Interface(), b.Interface())
	}
	return ""
}
