package supervisor

import (
	"errors"
	"syscall"
	"testing"
	"time"
)

// onLoop runs f on the loop through cfg.Tasks, as the control socket does.
func onLoop(t *testing.T, tasks chan func(), f func()) {
	t.Helper()
	done := make(chan struct{})
	select {
	case tasks <- func() { f(); close(done) }:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop took no task")
	}
	<-done
}

func view(t *testing.T, tasks chan func(), s *Supervisor) (v View) {
	onLoop(t, tasks, func() { v = s.View() })
	return v
}

// SetWorkers grows the pool (new slots start at once) and shrinks it (the
// last slots' workers get SignalOnHUP); View counts the slots that serve.
func TestSetWorkersScalesThePool(t *testing.T) {
	tasks := make(chan func())
	h := start(t, Config{Workers: 2, Interval: 20 * time.Millisecond, Tasks: tasks})
	h.waitEvent(Started, 1)
	var err error
	onLoop(t, tasks, func() { err = h.s.SetWorkers(5) })
	if err != nil {
		t.Fatal(err)
	}
	h.waitFor("5 serving", func() bool { v := view(t, tasks, h.s); return v.Workers == 5 && v.Serving == 5 })
	if n := h.spawnCount(); n != 5 {
		t.Fatalf("%d workers started, want 5", n)
	}
	onLoop(t, tasks, func() { err = h.s.SetWorkers(1) })
	if err != nil {
		t.Fatal(err)
	}
	if got := h.os.signalled(syscall.SIGTERM); len(got) != 4 || got[0] == 101 {
		t.Fatalf("signalled %v, want the workers of slots 1 to 4", got)
	}
	v := view(t, tasks, h.s)
	if v.Workers != 1 || v.Serving != 1 || len(v.Processes) != 5 || v.Processes[0].PID != 101 || v.Processes[0].Slot != 0 {
		t.Fatalf("after SetWorkers(1): %+v", v)
	}
	draining := 0
	for _, p := range v.Processes {
		if p.State == "draining" && p.Slot == -1 {
			draining++
		}
	}
	if draining != 4 {
		t.Errorf("%d workers draining, want 4: %+v", draining, v.Processes)
	}
	for _, n := range []int{0, MaxWorkers + 1} {
		onLoop(t, tasks, func() { err = h.s.SetWorkers(n) })
		if err == nil {
			t.Errorf("SetWorkers(%d) succeeded", n)
		}
	}
}

func TestSetWorkersNeedsAPool(t *testing.T) {
	tasks := make(chan func())
	h := start(t, Config{Interval: 20 * time.Millisecond, Tasks: tasks})
	h.waitEvent(Started, 1)
	var err error
	onLoop(t, tasks, func() { err = h.s.SetWorkers(2) })
	if !errors.Is(err, ErrNoPool) {
		t.Fatalf("SetWorkers without a pool: %v", err)
	}
	if n := h.spawnCount(); n != 1 {
		t.Fatalf("%d workers started", n)
	}
}

// View keeps the last reload's outcome, good and failed, and the count of
// workers replaced after dying; both survive a Snapshot and Restore.
func TestViewRecordsReloadsAndRestarts(t *testing.T) {
	tasks := make(chan func())
	cfg := Config{Interval: 30 * time.Millisecond, Heartbeat: 10 * time.Millisecond, Tasks: tasks}
	h := start(t, cfg)
	h.waitEvent(Started, 1)
	if v := view(t, tasks, h.s); v.LastReload != nil || v.Serving != 1 || v.Restarts != 0 {
		t.Fatalf("before any reload: %+v", v)
	}
	h.signal(syscall.SIGHUP)
	h.waitEvent(Reloaded, 2)
	v := view(t, tasks, h.s)
	if r := v.LastReload; r == nil || r.Outcome != ReloadOK || r.Generation != 2 || r.Ended.Before(r.Started) {
		t.Fatalf("after a good reload: %+v", r)
	}

	h.os.mu.Lock()
	h.os.dieOnStart = true
	h.os.mu.Unlock()
	h.signal(syscall.SIGHUP)
	h.waitEvent(StartFailed, 3)
	v = view(t, tasks, h.s)
	if r := v.LastReload; r == nil || r.Outcome != ReloadFailed || r.Generation != 3 || r.Error == "" {
		t.Fatalf("after a failed reload: %+v", r)
	}
	if last := v.Processes[len(v.Processes)-1]; last.PID != 102 || last.State != "still serving" || v.Serving != 1 {
		t.Fatalf("after a failed reload: %+v", v.Processes)
	}
	h.os.mu.Lock()
	h.os.dieOnStart = false
	h.os.mu.Unlock()
	// The retry of the failed reload's worker, after the backoff, replaces
	// generation 2.
	h.waitFor("a new generation serves", func() bool {
		v := view(t, tasks, h.s)
		return v.Serving == 1 && v.Processes[len(v.Processes)-1].Generation > 3
	})
	time.Sleep(1100 * time.Millisecond) // past Interval+1s: a death is no failed start
	serving := view(t, tasks, h.s).Processes
	h.os.exit(serving[len(serving)-1].PID, 9<<8)
	h.waitFor("the worker replaced", func() bool { return view(t, tasks, h.s).Restarts == 1 })

	before := view(t, tasks, h.s)
	st := h.exec()
	h2 := h.resume(cfg, st)
	after := view(t, tasks, h2.s)
	a, b := after.LastReload, before.LastReload
	if after.Restarts != 1 || a == nil || b == nil || a.Outcome != b.Outcome || a.Generation != b.Generation ||
		a.Error != b.Error || !a.Started.Equal(b.Started) || !a.Ended.Equal(b.Ended) {
		t.Fatalf("after a Restore: %+v %+v, before %+v %+v", after, a, before, b)
	}
}
