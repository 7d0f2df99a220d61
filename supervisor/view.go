package supervisor

import (
	"errors"
	"fmt"
	"sort"
	"time"
)

// View is a read-only account of the supervisor's live state, for an
// operator asking a running server (ss-bridge status): what runs, since
// when, and how the last reload went. It holds no reference into the
// supervisor, so it may be read anywhere once taken.
type View struct {
	// Generation is SERVER_STARTER_GENERATION of the last start attempt.
	Generation int `json:"generation"`
	// Workers is the pool's number of slots; 0 without --workers.
	Workers int  `json:"workers"`
	Rolling bool `json:"rolling,omitempty"`
	// Serving counts the workers that serve: a pool's slots with a started
	// worker; without a pool, the worker serving and, during a restart or
	// after one failed, the older ones still serving.
	Serving int `json:"serving"`
	// RollGeneration is the generation a pool's roll is rolling out; 0 when
	// none is under way.
	RollGeneration int  `json:"roll_generation,omitempty"`
	Ready          bool `json:"ready"`
	Stopping       bool `json:"stopping"`
	// Restarts counts the workers that died unexpectedly and were replaced.
	Restarts int `json:"restarts"`
	// Summary is the one-line account that systemd gets as STATUS=.
	Summary    string       `json:"summary"`
	Processes  []WorkerView `json:"processes"`
	LastReload *ReloadView  `json:"last_reload,omitempty"`
}

// WorkerView is one live worker.
type WorkerView struct {
	PID        int `json:"pid"`
	Generation int `json:"generation"`
	// Slot is the worker's slot in a pool; -1 for a single worker and for an
	// old worker draining.
	Slot int `json:"slot"`
	// State is "serving", "starting", "still serving" (an older generation
	// not yet told to go) or "draining" (told to go).
	State   string    `json:"state"`
	Started time.Time `json:"started"`
	// Restarts counts the replacements of the slot's workers that died.
	Restarts int `json:"restarts,omitempty"`
	// Status is the worker's last STATUS=.
	Status string `json:"status,omitempty"`
}

// ReloadView is the last restart (HUP, auto-restart, systemctl reload).
type ReloadView struct {
	// Generation is the generation it started.
	Generation int       `json:"generation,omitempty"`
	Started    time.Time `json:"started"`
	// Ended is zero while the reload is under way.
	Ended time.Time `json:"ended,omitzero"`
	// Outcome is "in progress", "ok" or "failed".
	Outcome string `json:"outcome"`
	Error   string `json:"error,omitempty"`
}

// Reload outcomes.
const (
	ReloadInProgress = "in progress"
	ReloadOK         = "ok"
	ReloadFailed     = "failed"
)

// record is what the supervisor counts for View only; nothing in the loop
// decides by it. It is kept out of loopState, whose every field steers the
// loop, and carried across a self-upgrade as State.Record.
type record struct {
	lastReload *ReloadView
	restarts   int
	// slotRestarts counts replacements per slot of a pool.
	slotRestarts map[int]int
}

// RecordState is the record in a State: an optional addition, which a
// reader that does not know it ignores.
type RecordState struct {
	LastReload   *ReloadView `json:"last_reload,omitempty"`
	Restarts     int         `json:"restarts,omitempty"`
	SlotRestarts map[int]int `json:"slot_restarts,omitempty"`
}

func (r record) state() *RecordState {
	if r.lastReload == nil && r.restarts == 0 && len(r.slotRestarts) == 0 {
		return nil
	}
	return &RecordState{LastReload: r.lastReload, Restarts: r.restarts, SlotRestarts: r.slotRestarts}
}

func recordOf(st *RecordState) record {
	if st == nil {
		return record{}
	}
	return record{lastReload: st.LastReload, restarts: st.Restarts, slotRestarts: st.SlotRestarts}
}

// noteRestart counts a worker that died unexpectedly; slot < 0 for the
// single worker.
func (s *Supervisor) noteRestart(slot int) {
	s.record.restarts++
	if slot >= 0 {
		if s.record.slotRestarts == nil {
			s.record.slotRestarts = map[int]int{}
		}
		s.record.slotRestarts[slot]++
	}
}

// noteReload keeps the account of the last reload from the events that
// also tell systemd about it (see service's observer): a reload ends when
// its old workers were told to go, or when its new generation failed to
// start while an older one serves.
func (s *Supervisor) noteReload(e Event) {
	r := s.record.lastReload
	switch e.Kind {
	case Reloading:
		s.record.lastReload = &ReloadView{Generation: e.Generation, Started: s.now(), Outcome: ReloadInProgress}
	case Started:
		// A HUP while a failed start waited for its retry restarts nothing:
		// its worker has no old one to replace, and no Reloaded follows.
		if r != nil && r.Outcome == ReloadInProgress && s.pool == nil && !s.restarting {
			r.Generation, r.Ended, r.Outcome = e.Generation, s.now(), ReloadOK
		}
	case Reloaded:
		if r != nil && r.Outcome == ReloadInProgress {
			r.Generation, r.Ended, r.Outcome = e.Generation, s.now(), ReloadOK
		}
	case StartFailed:
		if r != nil && r.Outcome == ReloadInProgress && s.everReady {
			r.Ended, r.Outcome = s.now(), ReloadFailed
			if r.Generation == 0 {
				r.Generation = e.Generation
			}
			if e.Err != nil {
				r.Error = e.Err.Error()
			} else {
				r.Error = fmt.Sprintf("worker %d exited with status %d", e.PID, e.Status)
			}
		}
	}
}

// View returns the live state. Call it on the loop's goroutine (a task).
func (s *Supervisor) View() View {
	v := View{
		Generation: s.generation,
		Ready:      s.everReady,
		Stopping:   s.stopping,
		Restarts:   s.record.restarts,
		Summary:    s.summary(),
		Processes:  []WorkerView{},
	}
	if r := s.record.lastReload; r != nil {
		copied := *r
		v.LastReload = &copied
	}
	add := func(w *worker, slot int, state string) {
		v.Processes = append(v.Processes, WorkerView{PID: w.pid, Generation: w.gen, Slot: slot, State: state,
			Started: w.started, Status: w.status})
	}
	if p := s.pool; p != nil {
		v.Workers, v.Rolling, v.RollGeneration = len(p.slots), s.cfg.Rolling, p.rollGen
		for i, sl := range p.slots {
			if sl.cur != nil {
				v.Serving++
				add(sl.cur, i, "serving")
				v.Processes[len(v.Processes)-1].Restarts = s.record.slotRestarts[i]
			}
			if sl.next != nil {
				add(sl.next, i, "starting")
			}
		}
	} else {
		if s.current != nil {
			v.Serving = 1
			add(s.current, -1, "serving")
			v.Processes[len(v.Processes)-1].Restarts = s.record.restarts
		}
		if s.starting != nil {
			add(s.starting, -1, "starting")
		}
	}
	for _, pid := range sortedPIDs(s.old) {
		w := s.old[pid]
		switch {
		case w.failedStart:
			add(w, -1, "failed start")
		case w.sent == 0 && w.signalAt.IsZero():
			add(w, -1, "still serving")
			if s.pool == nil {
				v.Serving++ // its restart is under way, or failed
			}
		default:
			add(w, -1, "draining")
		}
	}
	sort.SliceStable(v.Processes, func(i, j int) bool { return v.Processes[i].Generation < v.Processes[j].Generation })
	return v
}

// ErrNoPool is SetWorkers on a supervisor without --workers.
var ErrNoPool = errors.New("the server runs a single worker: scaling needs --workers")

// MaxWorkers bounds a pool's size, on the command line and at run time.
const MaxWorkers = 1024

// SetWorkers sets the pool's number of slots to n, as that many TTIN or TTOU
// would: slots added start a worker at once, slots removed (the last ones)
// tell their workers to go with SignalOnHUP. Call it on the loop's
// goroutine (a task).
func (s *Supervisor) SetWorkers(n int) error {
	switch {
	case s.pool == nil:
		return ErrNoPool
	case n < 1 || n > MaxWorkers:
		return fmt.Errorf("workers: %d is not between 1 and %d", n, MaxWorkers)
	case s.stopping:
		return errors.New("the server is stopping")
	}
	s.resize(n)
	s.logf("workers set to %d", n)
	s.observe(Event{Kind: Scaled})
	s.advance()
	return nil
}
