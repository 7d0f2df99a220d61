package supervisor

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// SlotEnv names the variable that tells a pool's worker its slot, 0 to N-1:
// the same slot keeps its number across restarts and replacements, so a
// worker may use it to pick a CPU, a port offset or a log name. It is set
// only with Config.Workers, so that a single worker's environment stays
// 0.35's.
const SlotEnv = "SERVER_STARTER_WORKER_SLOT"

// pool is the state of a supervisor that runs Config.Workers processes per
// generation. Each runs in a slot; a slot has at most one serving worker
// (cur) and one starting (next). A restart is a roll: every slot gets a
// worker of the new generation, all at once or MaxSurge at a time, and the
// slot's old worker is told to go when its replacement counts as started.
type pool struct {
	slots []*slot
	// gen is what a slot whose worker died is refilled with when no roll is
	// under way: the generation of the last roll that completed.
	gen int
	// rollGen is the generation being rolled out, 0 when no roll is under way.
	rollGen int
}

type slot struct {
	cur, next *worker
	// retryAt is when a slot whose starts keep failing is tried again;
	// failures counts them, for the backoff.
	retryAt  time.Time
	failures int
}

func newPool(n int) *pool {
	p := &pool{}
	for range n {
		p.slots = append(p.slots, &slot{})
	}
	return p
}

// worker finds a worker of a slot by pid.
func (p *pool) worker(pid int) *worker {
	for _, sl := range p.slots {
		for _, w := range []*worker{sl.cur, sl.next} {
			if w != nil && w.pid == pid {
				return w
			}
		}
	}
	return nil
}

// workers counts the slots' live workers.
func (p *pool) workers() int {
	n := 0
	for _, sl := range p.slots {
		if sl.cur != nil {
			n++
		}
		if sl.next != nil {
			n++
		}
	}
	return n
}

// release moves every slot's workers into old, for a stop.
func (p *pool) release(old map[int]*worker) {
	for _, sl := range p.slots {
		for _, w := range []*worker{sl.cur, sl.next} {
			if w != nil {
				w.readyAt = time.Time{}
				old[w.pid] = w
			}
		}
		sl.cur, sl.next, sl.retryAt = nil, nil, time.Time{}
	}
	p.rollGen = 0
}

func (p *pool) deadlines(consider func(time.Time)) {
	for _, sl := range p.slots {
		if sl.cur == nil && sl.next == nil {
			// Only an empty slot waits for a retry; a stale retryAt on a
			// slot that serves would wake the loop at once, forever.
			consider(sl.retryAt)
		}
		if sl.next != nil {
			consider(sl.next.readyAt)
		}
		if sl.cur != nil {
			consider(sl.cur.watchdogAt)
		}
	}
}

// surge is how many slots a rolling restart replaces at a time.
func (s *Supervisor) surge() int {
	if !s.cfg.Rolling {
		return len(s.pool.slots) // the whole generation at once
	}
	return max(s.cfg.MaxSurge, 1)
}

// firstSpawn starts the first generation: the single worker, or every slot.
func (s *Supervisor) firstSpawn() error {
	if s.pool == nil {
		return s.spawn()
	}
	s.generation++
	s.pool.rollGen = s.generation
	// Like 0.35's single worker, a command that cannot be executed at all
	// is an error at start-up, not a retry loop.
	if err := s.spawnSlot(0, s.generation, true); err != nil {
		return err
	}
	s.advance()
	return nil
}

// spawnSlot starts a worker of generation gen in slot i. An exec failure
// counts as a failed start of the slot, except for the very first worker
// (first), whose error is returned.
func (s *Supervisor) spawnSlot(i, gen int, first bool) error {
	p := s.pool
	sl := p.slots[i]
	sl.retryAt = time.Time{}
	env := s.readEnv()
	env["SERVER_STARTER_PORT"] = s.cfg.PortEnv
	env["SERVER_STARTER_GENERATION"] = strconv.Itoa(gen)
	env[SlotEnv] = strconv.Itoa(i)
	w, err := s.startWorker(env, gen)
	if err != nil {
		if first {
			return err
		}
		s.logf("%v", err)
		s.slotFailed(i, s.now(), err, gen, 0)
		return nil
	}
	w.slot = i
	if s.cfg.ReadyByNotify {
		w.readyAt = w.started.Add(s.cfg.ReadyTimeout)
	} else {
		w.readyAt = w.started.Add(s.cfg.Interval)
	}
	sl.next = w
	s.logf("starting new worker %d (generation %d, slot %d)", w.pid, gen, i)
	s.observe(Event{Kind: Spawned, Generation: gen, PID: w.pid})
	return nil
}

// advance starts what the slots need: a worker for every empty slot, and,
// while a roll is under way, replacements for slots of older generations,
// at most surge of them at a time. While old workers drain, fewer start:
// replacements starting plus old workers draining stay below twice the
// surge, so that a slow drain cannot pile up processes. A roll with every
// slot on its generation is complete.
func (s *Supervisor) advance() {
	p := s.pool
	if s.stopping {
		return
	}
	now := s.now()
	due := func(t time.Time) bool { return t.IsZero() || !now.Before(t) }
	fill := p.gen
	if p.rollGen != 0 {
		fill = p.rollGen
	}
	for i, sl := range p.slots {
		if sl.cur == nil && sl.next == nil && due(sl.retryAt) && fill > 0 {
			s.spawnSlot(i, fill, false)
		}
	}
	if p.rollGen == 0 {
		return
	}
	replacing, draining := 0, len(s.old)
	for _, sl := range p.slots {
		if sl.cur != nil && sl.next != nil {
			replacing++
		}
	}
	surge := s.surge()
	for i, sl := range p.slots {
		if replacing >= surge || (s.cfg.Rolling && replacing+draining >= 2*surge) {
			break
		}
		if sl.cur != nil && sl.next == nil && sl.cur.gen < p.rollGen {
			s.spawnSlot(i, p.rollGen, false)
			if sl.next != nil {
				replacing++
			}
		}
	}
	if p.rollGen == 0 {
		return // a start just failed and stopped the roll
	}
	if !s.cfg.Rolling && s.wholeReady() {
		// Every new worker counts as started, however the last one got
		// there (a slot whose old worker died meanwhile was filled on its
		// own by poolReady, or a slot was removed): promote the waiting ones.
		var waiting []int
		for i, sl := range p.slots {
			if sl.next != nil && sl.next.readyAt.IsZero() {
				waiting = append(waiting, i)
			}
		}
		if len(waiting) > 0 {
			s.promote(waiting)
		}
	}
	for _, sl := range p.slots {
		if sl.cur == nil || sl.cur.gen < p.rollGen || sl.next != nil {
			return
		}
	}
	s.rollDone()
}

// rollDone ends a roll that has every slot on its generation.
func (s *Supervisor) rollDone() {
	p := s.pool
	p.gen, p.rollGen = p.rollGen, 0
	s.lastStart = s.now()
	first := !s.everReady
	s.everReady = true
	s.observe(Event{Kind: Started, Generation: p.gen})
	if !first {
		s.observe(Event{Kind: Reloaded, Generation: p.gen})
	}
	s.afterRoll()
}

// afterRoll starts the roll that a HUP asked for during the last one, once
// that one has completed or stopped.
func (s *Supervisor) afterRoll() {
	if s.hupPending && !s.stopping && s.pool.rollGen == 0 {
		s.hupPending = false
		s.logf("received HUP, spawning a new worker")
		s.roll()
	}
}

func (s *Supervisor) poolHUP() {
	switch {
	case s.stopping:
	case s.pool.rollGen != 0:
		s.hupPending = true
	default:
		s.logf("received HUP, spawning a new worker")
		s.roll()
	}
}

// roll starts replacing every slot with a new generation.
func (s *Supervisor) roll() {
	p := s.pool
	s.generation++
	p.rollGen = s.generation
	s.autoAt = time.Time{}
	for _, sl := range p.slots {
		// The operator may have fixed what failed.
		sl.failures, sl.retryAt = 0, time.Time{}
	}
	s.observe(Event{Kind: Reloading, Generation: p.rollGen})
	s.advance()
}

// poolSettled: every slot serves and no roll is under way (for auto-restart).
func (s *Supervisor) poolSettled() bool {
	p := s.pool
	if p.rollGen != 0 {
		return false
	}
	for _, sl := range p.slots {
		if sl.cur == nil || sl.next != nil {
			return false
		}
	}
	return true
}

// poolReady counts a slot's starting worker as started.
func (s *Supervisor) poolReady(w *worker) {
	if w == nil || w.readyAt.IsZero() || w.slot >= len(s.pool.slots) {
		return
	}
	sl := s.pool.slots[w.slot]
	if sl.next != w {
		return
	}
	w.readyAt = time.Time{}
	// failures is not reset here but once a worker has lived past
	// --interval + 1 s (poolExited), so that a build that dies right after
	// it counts as started backs off like one that dies before.
	s.observe(Event{Kind: WorkerStarted, Generation: w.gen, PID: w.pid})
	if s.cfg.Rolling || sl.cur == nil {
		s.promote([]int{w.slot})
	} else if s.wholeReady() {
		var slots []int
		for i, sl := range s.pool.slots {
			if sl.next != nil {
				slots = append(slots, i)
			}
		}
		s.promote(slots)
	}
	s.advance()
}

// wholeReady: every slot's new worker counts as started (a restart of the
// whole generation at once), and the old ones may be told to go.
func (s *Supervisor) wholeReady() bool {
	for _, sl := range s.pool.slots {
		if sl.next != nil && !sl.next.readyAt.IsZero() {
			return false
		}
		if sl.next == nil && sl.cur != nil && sl.cur.gen < s.pool.rollGen {
			return false
		}
	}
	return true
}

// promote makes the new workers of slots serve, and tells the workers they
// replace to go, after KILL_OLD_DELAY.
func (s *Supervisor) promote(slots []int) {
	retired := map[int]*worker{}
	for _, i := range slots {
		sl := s.pool.slots[i]
		if sl.cur != nil {
			retired[sl.cur.pid] = sl.cur
			s.old[sl.cur.pid] = sl.cur
		}
		sl.cur, sl.next = sl.next, nil
		sl.retryAt = time.Time{} // it serves: nothing to retry
	}
	s.updateStatus()
	if len(retired) == 0 {
		return
	}
	name := logName(s.cfg.SignalOnHUP, s.cfg.SignalOnHUPName)
	if len(slots) == 1 {
		w := s.pool.slots[slots[0]].cur
		s.logf("worker %d (generation %d, slot %d) is now running, sending %s to old worker %s", w.pid, w.gen, w.slot, name, pidList(retired, ""))
	} else {
		s.logf("new worker is now running, sending %s to old workers:%s", name, pidList(retired, ""))
	}
	if delay := s.settings.killOldDelay; delay > 0 {
		s.logf("sleeping %s secs before killing old workers", formatSeconds(delay))
		for _, w := range retired {
			w.signalAt = s.now().Add(delay)
		}
		return
	}
	if len(slots) > 1 {
		s.logf("killing old workers") // as 0.35 says after its line above
	}
	s.signalAll(retired, s.cfg.SignalOnHUP)
}

// poolDeadlines acts on the pool's timers: old workers due their signal,
// starting workers due to count as started (or to have failed), watchdogs,
// retries; then starts what the slots need.
func (s *Supervisor) poolDeadlines(now time.Time) {
	due := func(t time.Time) bool { return !t.IsZero() && !now.Before(t) }
	retired := map[int]*worker{}
	for pid, w := range s.old {
		if due(w.signalAt) {
			w.signalAt = time.Time{}
			retired[pid] = w
		}
	}
	if len(retired) > 0 && !s.stopping {
		s.logf("killing old workers")
		s.signalAll(retired, s.cfg.SignalOnHUP)
	}
	if s.stopping {
		return
	}
	if !s.cfg.ReadyByNotify {
		for _, sl := range s.pool.slots {
			if w := sl.next; w != nil && due(w.readyAt) {
				// A worker that exited just before its --interval ran out
				// may have no SIGCHLD in the loop's channel yet: reap before
				// it counts as started, or its slot's old worker would be
				// told to go for a dead replacement.
				s.handleSignal(syscall.SIGCHLD)
				break
			}
		}
	}
	for i, sl := range s.pool.slots {
		if w := sl.next; w != nil && due(w.readyAt) {
			if s.cfg.ReadyByNotify {
				s.poolNotReady(i)
			} else {
				s.poolReady(w)
			}
		}
		if w := sl.cur; w != nil && due(w.watchdogAt) {
			sl.cur = nil
			s.abortUnwatched(w)
			s.slotBackoff(i, w.started)
		}
	}
	s.advance()
}

// poolNotReady gives up on slot i's starting worker, silent past
// ReadyTimeout: it is told to go, and its start has failed.
func (s *Supervisor) poolNotReady(i int) {
	sl := s.pool.slots[i]
	w := sl.next
	sl.next = nil
	w.readyAt = time.Time{}
	s.slotFailed(i, w.started, s.dismissSilent(w), w.gen, w.pid)
}

// slotFailed handles a failed start in slot i. A slot with a worker
// serving was being replaced by a roll: the roll stops there, so that a
// bad build takes no more slots; the slots not yet replaced keep their
// workers, and those already replaced keep the new ones. An empty slot is
// tried again, with backoff.
func (s *Supervisor) slotFailed(i int, startedAt time.Time, err error, gen, pid int) {
	p := s.pool
	sl := p.slots[i]
	if sl.cur != nil && p.rollGen != 0 {
		s.stopRoll()
	} else {
		s.slotBackoff(i, startedAt)
		if s.everReady {
			// The refill of an empty slot failed, during a reload's roll or
			// not: no reload or start has failed (StartFailed would tell
			// systemd so, and the status would say it until the next
			// reload), and the slot is retried; the summary says so.
			s.observe(Event{Kind: Exited, Generation: gen, PID: pid})
			return
		}
	}
	s.observe(Event{Kind: StartFailed, Generation: gen, PID: pid, Err: err})
	s.afterRoll()
}

// stopRoll abandons the roll under way: its other starting workers are told
// to go.
func (s *Supervisor) stopRoll() {
	p := s.pool
	stopped := map[int]*worker{}
	for _, sl := range p.slots {
		if w := sl.next; w != nil && sl.cur != nil {
			sl.next = nil
			w.readyAt = time.Time{}
			w.failedStart = true
			s.old[w.pid] = w
			stopped[w.pid] = w
		}
	}
	replaced := 0
	for _, sl := range p.slots {
		if sl.cur != nil && sl.cur.gen == p.rollGen {
			replaced++
		}
	}
	s.logf("restart stopped: %d of %d workers run generation %d, the others keep theirs", replaced, len(p.slots), p.rollGen)
	if len(stopped) > 0 {
		s.logf("stopping new workers:%s", pidList(stopped, ""))
		s.signalAll(stopped, syscall.SIGTERM)
	}
	p.rollGen = 0
	s.updateStatus()
}

// slotBackoff schedules slot i's next start after a failed one, as failed
// does for the single worker.
func (s *Supervisor) slotBackoff(i int, startedAt time.Time) {
	sl := s.pool.slots[i]
	sl.failures++
	delay := s.backoff(sl.failures)
	sl.retryAt = startedAt.Add(delay)
	if delay > s.cfg.Interval && sl.failures > 1 {
		s.logf("%d failed starts in a row in slot %d, next attempt in %ss", sl.failures, i, formatSeconds(delay))
	}
}

// poolExited handles the exit of a slot's worker.
func (s *Supervisor) poolExited(pid int, status syscall.WaitStatus) {
	for i, sl := range s.pool.slots {
		switch {
		case sl.next != nil && sl.next.pid == pid:
			w := sl.next
			sl.next = nil
			if s.stopping {
				s.logf("worker %d died, status:%d", pid, status)
				return
			}
			s.logf("new worker %d seems to have failed to start, exit status:%d", pid, status)
			s.slotFailed(i, w.started, fmt.Errorf("new worker %d exited with status %d before it was ready", pid, status), w.gen, pid)
			return
		case sl.cur != nil && sl.cur.pid == pid:
			w := sl.cur
			sl.cur = nil
			s.updateStatus()
			s.observe(Event{Kind: Exited, Generation: w.gen, PID: pid, Status: status})
			s.logf("worker %d died unexpectedly with status:%d, restarting", pid, status)
			s.noteRestart(i)
			// One that dies soon after it started is failing to start.
			if s.now().Sub(w.started) < s.cfg.Interval+time.Second {
				s.slotBackoff(i, w.started)
			} else {
				sl.failures = 0
			}
			stopped := false
			if s.everReady && s.pool.rollGen != 0 && w.gen == s.pool.rollGen {
				// A worker of the roll's generation died while the roll goes
				// on, however long after it counted as started: the build may
				// fail after start-up (after its first requests, or after an
				// --interval shorter than its boot), and it must take no more
				// slots. After the roll, such a death is any slot's.
				s.stopRoll()
				s.observe(Event{Kind: StartFailed, Generation: w.gen, PID: pid, Status: status,
					Err: fmt.Errorf("new worker %d exited with status %d %ss after it started, during the restart", pid, status, formatSeconds(s.now().Sub(w.started).Round(time.Millisecond)))})
				stopped = true
			}
			// Refilled with its own generation, unless a roll is under way:
			// after a stopped roll too, as the refill runs the command as it
			// is now, the one the stopped roll started.
			if s.pool.rollGen == 0 && w.gen > s.pool.gen {
				s.pool.gen = w.gen
			}
			s.advance()
			if stopped {
				s.afterRoll()
			}
			return
		}
	}
}

// poolScale adds a slot (TTIN) or removes the last one (TTOU; never the
// only one). A removed slot's workers are told to go.
func (s *Supervisor) poolScale(sig syscall.Signal) {
	if s.stopping {
		return
	}
	n := len(s.pool.slots)
	if sig == syscall.SIGTTIN && n < MaxWorkers {
		s.resize(n + 1)
	} else if sig == syscall.SIGTTOU && n > 1 {
		s.resize(n - 1)
	}
	s.logf("received %s, workers: %d", signalName(sig), len(s.pool.slots))
	s.observe(Event{Kind: Scaled})
	s.advance()
}

// resize sets the pool's number of slots to n: slots added are empty (advance
// fills them), slots removed (the last ones) tell their workers to go with
// SignalOnHUP.
func (s *Supervisor) resize(n int) {
	p := s.pool
	for len(p.slots) < n {
		p.slots = append(p.slots, &slot{})
	}
	if len(p.slots) <= n {
		return
	}
	gone := map[int]*worker{}
	for _, sl := range p.slots[n:] {
		for _, w := range []*worker{sl.cur, sl.next} {
			if w != nil {
				// One still starting never served: it is no old
				// generation of the status file.
				w.failedStart = w == sl.next
				w.readyAt = time.Time{}
				gone[w.pid] = w
				s.old[w.pid] = w
			}
		}
	}
	p.slots = p.slots[:n]
	for i := range s.record.slotRestarts {
		if i >= n {
			delete(s.record.slotRestarts, i)
		}
	}
	if len(gone) > 0 {
		s.signalAll(gone, s.cfg.SignalOnHUP)
	}
	s.updateStatus()
}

// poolWriteStatus writes one GEN:PID line per live worker that serves or
// drains (not one that failed to start), ordered by generation then pid.
func (s *Supervisor) poolWriteStatus() {
	var entries []StatusEntry
	for _, sl := range s.pool.slots {
		if sl.cur != nil {
			entries = append(entries, StatusEntry{sl.cur.gen, sl.cur.pid})
		}
	}
	for _, w := range s.old {
		if !w.failedStart {
			entries = append(entries, StatusEntry{w.gen, w.pid})
		}
	}
	if err := writeStatusEntries(s.cfg.StatusFile, entries); err != nil {
		s.logf("failed to update the status file: %v", err)
		return
	}
	s.statusMade = true
}

// poolSummary is the pool's one-line account, for STATUS=: per generation
// with serving slots, oldest first, "generation G: S/N serving" (the
// newest) or "still serving" (older ones, while a roll is under way or
// after it stopped), then what starts, fails and drains. The first part
// names the generation that serves them all (see units.ParseServing).
func (s *Supervisor) poolSummary() string {
	p := s.pool
	n := len(p.slots)
	serving, starting := map[int]int{}, map[int]int{}
	for _, sl := range p.slots {
		if sl.cur != nil {
			serving[sl.cur.gen]++
		}
		if sl.next != nil {
			starting[sl.next.gen]++
		}
	}
	draining := map[int]int{}
	for _, w := range s.old {
		draining[w.gen]++
	}
	var parts []string
	if s.stopping {
		parts = append(parts, "stopping")
	}
	gens := sortedKeys(serving)
	for i, g := range gens {
		state := "serving"
		if i < len(gens)-1 {
			state = "still serving"
		}
		parts = append(parts, fmt.Sprintf("generation %d: %d/%d %s", g, serving[g], n, state))
	}
	for _, g := range sortedKeys(starting) {
		parts = append(parts, fmt.Sprintf("generation %d: %d starting", g, starting[g]))
	}
	failing := 0
	for _, sl := range p.slots {
		if !sl.retryAt.IsZero() {
			failing++
		}
	}
	if failing > 0 {
		parts = append(parts, fmt.Sprintf("%d failed to start, retrying", failing))
	}
	for _, g := range sortedKeys(draining) {
		parts = append(parts, fmt.Sprintf("%d of generation %d draining", draining[g], g))
	}
	if len(parts) == 0 {
		return "no worker running"
	}
	return strings.Join(parts, "; ")
}

func sortedKeys(m map[int]int) []int {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	return keys
}
