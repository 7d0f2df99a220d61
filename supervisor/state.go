package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/notify"
	"golang.org/x/sys/unix"
)

// State is the supervisor's state, handed from one program image to the next
// across an execve of this process (a self-upgrade): Snapshot takes it in the
// old image, Restore rebuilds the supervisor from it in the new one. The
// workers, their notify sockets and the generation counter carry on; only
// the Config is not in it, since the new image derives it again from the
// command line.
//
// # Encoding
//
// State is encoded with encoding/json, as one object:
//
//	{"version":1, "mono_ns":812345678901,
//	 "generation":7, "failures":0, "restarting":true, "hup_pending":true,
//	 "stopping":false, "status_made":true, "ever_ready":true,
//	 "last_start_ns":812000000000,
//	 "deadlines_ns":{"ready":812350000000, "retry":0, "kill_old":0, "auto":0, "beat":0},
//	 "workers":[
//	   {"pid":2001, "gen":6, "role":"old", "started_ns":811000000000, "sent":0,
//	    "kill_at_ns":0, "watchdog_at_ns":0, "status":"ok", "failed_start":false,
//	    "notify":{"fd":12, "path":"/tmp/notify-123/0123456789abcdef.sock"}},
//	   {"pid":2002, "gen":7, "role":"starting", "started_ns":812300000000, ...}]}
//
// Fields:
//   - version: the format's major version: 1, or 2 for a pool. It is
//     raised only for a change an older reader would misread; a reader refuses
//     a version outside [MinStateVersion, StateVersion]. Additions that an
//     older reader may ignore keep the version: a reader ignores fields it
//     does not know.
//   - mono_ns: CLOCK_MONOTONIC when the state was taken; for reports.
//   - generation: SERVER_STARTER_GENERATION of the last start attempt; the
//     next start is generation+1. At least 1.
//   - failures: failed starts in a row, for the backoff.
//   - restarting: the starting worker replaces the serving one (a HUP or an
//     auto-restart), so the old generations are signalled once it has started.
//   - hup_pending: a HUP arrived during a restart; one more restart follows.
//   - stopping: TERM, INT or QUIT was received; the workers were signalled.
//   - status_made: this process created the status file and removes it at exit.
//   - ever_ready: a generation has counted as started.
//   - last_start_ns: when a generation last counted as started (auto-restart).
//   - deadlines_ns: when the starting worker counts as started (or, waiting
//     for READY=1, has failed) (ready), the next start after a failure
//     (retry), the old generations are signalled after KILL_OLD_DELAY
//     (kill_old), the next auto-restart check (auto), the next heartbeat
//     (beat).
//   - pool (version 2, only with Config.Workers): the pool's slots, in slot
//     order, each with when it is next tried after failed starts (retry_ns)
//     and how many failed in a row (failures); the generation its empty
//     slots are refilled with (gen), and the generation being rolled out
//     (roll_gen, 0 for none).
//   - record (optional, any version): what View reports beyond the loop's
//     state: the last reload (generation, started, ended as RFC 3339 times,
//     outcome, error), the workers replaced after dying (restarts) and
//     those per slot of a pool (slot_restarts).
//   - workers: every live worker: its pid, generation, role ("current": it
//     serves; "starting": not yet counted as started, at most one of each;
//     "old": an older generation; in a pool "slot": it serves in slot
//     "slot", and "slot-starting": it starts there, at most one of each
//     per slot), when it was started, the signal it was
//     told to go with (a number, 0 for none), when it gets SIGKILL (kill_at),
//     when its watchdog expires (watchdog_at), its last STATUS=, whether it is
//     a start given up on (failed_start), and its notify socket, if it has
//     one: the descriptor, open in the new image without close-on-exec, and
//     the socket's path. In a pool also: when a starting worker counts as
//     started or has failed (ready_at_ns), and when an old worker gets
//     --signal-on-hup after KILL_OLD_DELAY (signal_at_ns); these three
//     are left out when zero.
//
// Version 2 adds the pool: a version 1 reader would have taken a pool's
// workers for one generation each. A supervisor without a pool writes
// version 1, which every reader since reads.
//
// Every time ("_ns") is absolute CLOCK_MONOTONIC in nanoseconds, 0 for none:
// that clock runs on across an execve, whereas Go's monotonic readings are
// relative to the start of the image and a remaining duration would stretch
// by the time the exec takes. testdata/state-v1.json is a version 1 state,
// and testdata/state-v2.json a pool's, that every later reader must still
// resume from.
type State struct {
	Version     int           `json:"version"`
	MonoNS      int64         `json:"mono_ns"`
	Generation  int           `json:"generation"`
	Failures    int           `json:"failures"`
	Restarting  bool          `json:"restarting"`
	HUPPending  bool          `json:"hup_pending"`
	Stopping    bool          `json:"stopping"`
	StatusMade  bool          `json:"status_made"`
	EverReady   bool          `json:"ever_ready"`
	LastStartNS int64         `json:"last_start_ns"`
	Deadlines   Deadlines     `json:"deadlines_ns"`
	Workers     []WorkerState `json:"workers"`
	Pool        *PoolState    `json:"pool,omitempty"`
	// Record is what View reports beyond the loop's state (optional).
	Record *RecordState `json:"record,omitempty"`
}

// PoolState is a pool's slots (see State).
type PoolState struct {
	Gen     int         `json:"gen"`
	RollGen int         `json:"roll_gen"`
	Slots   []SlotState `json:"slots"`
}

// SlotState is one slot of a PoolState; its workers are in State.Workers.
type SlotState struct {
	RetryNS  int64 `json:"retry_ns"`
	Failures int   `json:"failures"`
}

// Deadlines are the supervisor's timers, in CLOCK_MONOTONIC nanoseconds (0:
// not armed). See State.
type Deadlines struct {
	Ready   int64 `json:"ready"`
	Retry   int64 `json:"retry"`
	KillOld int64 `json:"kill_old"`
	Auto    int64 `json:"auto"`
	Beat    int64 `json:"beat"`
}

// Role is what a worker is to the supervisor.
type Role string

const (
	Current  Role = "current"
	Starting Role = "starting"
	Old      Role = "old"
	// A pool's workers (version 2).
	SlotServing  Role = "slot"
	SlotStarting Role = "slot-starting"
)

// WorkerState is one live worker in a State.
type WorkerState struct {
	PID          int          `json:"pid"`
	Gen          int          `json:"gen"`
	Role         Role         `json:"role"`
	StartedNS    int64        `json:"started_ns"`
	Sent         int          `json:"sent"`
	KillAtNS     int64        `json:"kill_at_ns"`
	WatchdogAtNS int64        `json:"watchdog_at_ns"`
	Status       string       `json:"status"`
	FailedStart  bool         `json:"failed_start"`
	Notify       *NotifyState `json:"notify,omitempty"`
	Slot         int          `json:"slot,omitempty"`
	ReadyAtNS    int64        `json:"ready_at_ns,omitempty"`
	SignalAtNS   int64        `json:"signal_at_ns,omitempty"`
}

// NotifyState is a worker's NOTIFY_SOCKET: its descriptor and path.
type NotifyState struct {
	FD   int    `json:"fd"`
	Path string `json:"path"`
}

// The versions of State this supervisor reads; it writes StateVersion.
const (
	MinStateVersion = 1
	StateVersion    = 2
	// poolStateVersion is the first version with a pool.
	poolStateVersion = 2
)

// UnmarshalJSON decodes a State and refuses a version this supervisor cannot
// read, so that a State embedded in a larger document is checked too.
func (st *State) UnmarshalJSON(data []byte) error {
	type plain State // without this method
	var p plain
	if err := json.Unmarshal(data, &p); err != nil {
		return fmt.Errorf("supervisor state: %w", err)
	}
	if err := checkVersion(p.Version); err != nil {
		return err
	}
	*st = State(p)
	return nil
}

func checkVersion(v int) error {
	if v < MinStateVersion || v > StateVersion {
		return fmt.Errorf("supervisor state version %d: this ss-bridge reads versions %d to %d", v, MinStateVersion, StateVersion)
	}
	return nil
}

// FDs lists the descriptors the state names, which must be open, without
// close-on-exec, in the new image: the caller clears the flag on exactly
// these before the exec. Restore sets it again and leaves them open, so that
// a failed resume can still hand them on; the caller closes them once the
// resume is final.
func (st State) FDs() []int {
	var fds []int
	for _, w := range st.Workers {
		if w.Notify != nil {
			fds = append(fds, w.Notify.FD)
		}
	}
	return fds
}

// monoClock converts between the supervisor's clock and absolute
// CLOCK_MONOTONIC nanoseconds, which survive an execve.
type monoClock struct {
	now  time.Time
	mono int64
}

func (s *Supervisor) monoClock() monoClock {
	var ts unix.Timespec
	// CLOCK_MONOTONIC cannot fail with a valid pointer.
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return monoClock{now: s.now(), mono: ts.Nano()}
}

func (c monoClock) toMono(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return c.mono + int64(t.Sub(c.now))
}

func (c monoClock) fromMono(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return c.now.Add(time.Duration(ns - c.mono))
}

// Snapshot returns the supervisor's state, for the next image of this
// process. It changes nothing, so the supervisor carries on if the exec
// fails. Call it from the goroutine that runs the loop (the state is that
// goroutine's): from the Observer, which the loop calls between its steps.
// Take it as late as possible before the exec: what happens after it is
// lost.
func (s *Supervisor) Snapshot() State {
	c := s.monoClock()
	st := State{
		Version:     1,
		MonoNS:      c.mono,
		Generation:  s.generation,
		Failures:    s.failures,
		Restarting:  s.restarting,
		HUPPending:  s.hupPending,
		Stopping:    s.stopping,
		StatusMade:  s.statusMade,
		EverReady:   s.everReady,
		LastStartNS: c.toMono(s.lastStart),
		Deadlines: Deadlines{
			Ready:   c.toMono(s.readyAt),
			Retry:   c.toMono(s.retryAt),
			KillOld: c.toMono(s.killOldAt),
			Auto:    c.toMono(s.autoAt),
			Beat:    c.toMono(s.beatAt),
		},
		Record: s.record.state(),
	}
	add := func(w *worker, role Role) {
		ws := WorkerState{
			PID:          w.pid,
			Gen:          w.gen,
			Role:         role,
			StartedNS:    c.toMono(w.started),
			Sent:         int(w.sent),
			KillAtNS:     c.toMono(w.killAt),
			WatchdogAtNS: c.toMono(w.watchdogAt),
			Status:       w.status,
			FailedStart:  w.failedStart,
			Slot:         w.slot,
			ReadyAtNS:    c.toMono(w.readyAt),
			SignalAtNS:   c.toMono(w.signalAt),
		}
		if w.notify != nil {
			// FD fails only for a closed socket, which a live worker's is not.
			if fd, err := w.notify.FD(); err == nil {
				ws.Notify = &NotifyState{FD: fd, Path: w.notify.Path()}
			}
		}
		st.Workers = append(st.Workers, ws)
	}
	if s.current != nil {
		add(s.current, Current)
	}
	if s.starting != nil {
		add(s.starting, Starting)
	}
	for _, pid := range sortedPIDs(s.old) {
		add(s.old[pid], Old)
	}
	if p := s.pool; p != nil {
		st.Version = poolStateVersion
		st.Pool = &PoolState{Gen: p.gen, RollGen: p.rollGen}
		for _, sl := range p.slots {
			st.Pool.Slots = append(st.Pool.Slots, SlotState{RetryNS: c.toMono(sl.retryAt), Failures: sl.failures})
			if sl.cur != nil {
				add(sl.cur, SlotServing)
			}
			if sl.next != nil {
				add(sl.next, SlotStarting)
			}
		}
	}
	return st
}

// CheckExec fails when an execve of this process now would kill workers
// through their Pdeathsig: a worker was started off the main thread, or the
// caller, who is to exec, is not on it (see the init in sys.go).
func (s *Supervisor) CheckExec() error {
	if s.offMainThread {
		return errors.New("workers were started off the main thread: an exec would signal them")
	}
	if s.sys.onMainThread != nil && !s.sys.onMainThread() {
		return fmt.Errorf("exec off the main thread (thread %d) would signal the workers", unix.Gettid())
	}
	return nil
}

// Restore returns a supervisor for cfg that carries on from st, taken by
// Snapshot in an earlier image of this process. Run then starts no first
// generation: it reaps the workers that exited meanwhile (their SIGCHLD was
// lost in the exec) and goes on, with every deadline where it was.
//
// Restore fails on a state it cannot carry on from (a version it does not
// read, no generation started, two workers with one pid, two serving, a
// notify socket that is not at its descriptor), having adopted nothing; the
// descriptors st names are then left open, for a rollback.
func Restore(cfg Config, st State) (*Supervisor, error) {
	s, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := st.check(); err != nil {
		return nil, err
	}
	c := s.monoClock()
	s.loopState = loopState{
		generation: st.Generation,
		old:        map[int]*worker{},
		readyAt:    c.fromMono(st.Deadlines.Ready),
		retryAt:    c.fromMono(st.Deadlines.Retry),
		failures:   st.Failures,
		restarting: st.Restarting,
		killOldAt:  c.fromMono(st.Deadlines.KillOld),
		hupPending: st.HUPPending,
		stopping:   st.Stopping,
		lastStart:  c.fromMono(st.LastStartNS),
		autoAt:     c.fromMono(st.Deadlines.Auto),
		statusMade: st.StatusMade,
		everReady:  st.EverReady,
		beatAt:     c.fromMono(st.Deadlines.Beat),
	}
	// The old image writes the file once per turn of its loop and may have
	// exec'd in the turn of a change (a task, a preflight's exit reaped with
	// a worker's): the new one writes it first thing.
	s.updateStatus()
	// The pool is the state's, whatever cfg.Workers says: the workers the
	// state names run, and the command line's count applies from the next
	// scaling on.
	s.pool = nil
	if st.Pool != nil {
		s.pool = &pool{gen: st.Pool.Gen, rollGen: st.Pool.RollGen}
		for _, ss := range st.Pool.Slots {
			s.pool.slots = append(s.pool.slots, &slot{retryAt: c.fromMono(ss.RetryNS), failures: ss.Failures})
		}
	}
	var adopted []*notify.WorkerSocket
	for _, ws := range st.Workers {
		w := &worker{
			pid:         ws.PID,
			gen:         ws.Gen,
			started:     c.fromMono(ws.StartedNS),
			sent:        syscall.Signal(ws.Sent),
			killAt:      c.fromMono(ws.KillAtNS),
			status:      ws.Status,
			watchdogAt:  c.fromMono(ws.WatchdogAtNS),
			failedStart: ws.FailedStart,
			slot:        ws.Slot,
			readyAt:     c.fromMono(ws.ReadyAtNS),
			signalAt:    c.fromMono(ws.SignalAtNS),
		}
		if ws.Notify != nil {
			if w.notify, err = notify.AdoptWorkerSocket(ws.Notify.FD, ws.Notify.Path); err != nil {
				for _, a := range adopted {
					a.Release()
				}
				return nil, fmt.Errorf("restore worker %d: %w", ws.PID, err)
			}
			adopted = append(adopted, w.notify)
		}
		switch ws.Role {
		case Current:
			s.current = w
		case Starting:
			s.starting = w
		case Old:
			s.old[w.pid] = w
		case SlotServing:
			s.pool.slots[w.slot].cur = w
		case SlotStarting:
			s.pool.slots[w.slot].next = w
		}
	}
	s.record = recordOf(st.Record)
	s.restored = true
	return s, nil
}

// Check refuses a state Restore cannot carry on from, without adopting
// anything: for a preflight that must have no side effect.
func (st State) Check() error { return st.check() }

// check refuses a state Restore cannot carry on from.
func (st State) check() error {
	if err := checkVersion(st.Version); err != nil {
		return err
	}
	if st.Generation < 1 {
		return errors.New("supervisor state: no generation was started")
	}
	if st.Pool != nil && st.Version < poolStateVersion {
		return fmt.Errorf("supervisor state: a pool in a version %d state", st.Version)
	}
	if st.Pool != nil && len(st.Pool.Slots) == 0 {
		return errors.New("supervisor state: a pool without slots")
	}
	pids := map[int]bool{}
	roles := map[Role]int{}
	inSlot := map[[2]any]bool{}
	for _, w := range st.Workers {
		if w.Role == SlotServing || w.Role == SlotStarting {
			switch {
			case st.Pool == nil:
				return fmt.Errorf("supervisor state: worker %d is in a slot without a pool", w.PID)
			case w.Slot < 0 || w.Slot >= len(st.Pool.Slots):
				return fmt.Errorf("supervisor state: worker %d is in slot %d of %d", w.PID, w.Slot, len(st.Pool.Slots))
			case inSlot[[2]any{w.Role, w.Slot}]:
				return fmt.Errorf("supervisor state: two workers are %s in slot %d", w.Role, w.Slot)
			case w.Role == SlotStarting && w.ReadyAtNS == 0:
				return fmt.Errorf("supervisor state: worker %d is starting without a deadline", w.PID)
			}
			inSlot[[2]any{w.Role, w.Slot}] = true
		}
		switch {
		case w.PID <= 0:
			return fmt.Errorf("supervisor state: worker pid %d", w.PID)
		case pids[w.PID]:
			return fmt.Errorf("supervisor state: worker %d is listed twice", w.PID)
		case w.Role != Current && w.Role != Starting && w.Role != Old && w.Role != SlotServing && w.Role != SlotStarting:
			return fmt.Errorf("supervisor state: worker %d has an unknown role %q", w.PID, w.Role)
		case (w.Role == Current || w.Role == Starting) && roles[w.Role] > 0:
			return fmt.Errorf("supervisor state: two workers are %s", w.Role)
		case w.Role == Starting && st.Deadlines.Ready == 0:
			return fmt.Errorf("supervisor state: worker %d is starting without a deadline", w.PID)
		case w.Sent < 0 || w.Sent > 64:
			return fmt.Errorf("supervisor state: worker %d was sent signal %d", w.PID, w.Sent)
		}
		pids[w.PID] = true
		roles[w.Role]++
	}
	return nil
}
