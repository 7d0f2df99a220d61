// Package supervisor runs generations of a worker command and replaces them on request without dropping a connection.
package supervisor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/ratelog"
	"github.com/ss-bridge/ss-bridge/notify"
	"golang.org/x/sys/unix"
)

// Config says what to run and how to replace it. The zero value of every
// duration is 0.35's default behaviour except MaxBackoff (see there).
type Config struct {
	// Command is the worker's argv. Command[0] is looked up in the worker
	// environment's PATH at every start, so a new binary is picked up.
	Command []string
	// Dir is the directory the worker starts in ("" for ours).
	Dir string
	// Env is the workers' base environment. Before every start the files of
	// the directory named by its ENVDIR are laid over it, and
	// SERVER_STARTER_PORT and SERVER_STARTER_GENERATION are set.
	// ENABLE_AUTO_RESTART, AUTO_RESTART_INTERVAL and KILL_OLD_DELAY are read
	// from the same overlay, at each start attempt and when an auto-restart
	// falls due.
	Env []string
	// PortEnv is the value of SERVER_STARTER_PORT.
	PortEnv string
	// Files is the workers' descriptor table (see syscall.ProcAttr.Files).
	Files []uintptr
	// Interval is how long a new worker must stay alive to count as started.
	Interval time.Duration
	// SignalOnHUP goes to the old generation once a new one has started;
	// SignalOnTERM to every generation when the supervisor receives TERM.
	SignalOnHUP, SignalOnTERM syscall.Signal
	// SignalOnHUPName and SignalOnTERMName, when set, name those signals in
	// the log lines: 0.35 prints a signal given as a number ("9") as given.
	SignalOnHUPName, SignalOnTERMName string
	// KillTimeout, when positive, is how long a signalled worker may take to
	// exit before it gets SIGKILL.
	KillTimeout time.Duration
	// MaxBackoff caps the delay between failed starts; 0 means one minute.
	MaxBackoff time.Duration
	// StatusFile, when set, is kept listing "GEN:PID" of every live
	// generation, and removed when Run returns if Run created it.
	StatusFile string
	// Log receives 0.35's log lines; nil means os.Stderr.
	Log io.Writer
	// Observer, when set, is told of every change of generation. It is
	// called from the supervisor's goroutine and must not block.
	Observer func(Event)

	// ReadyByNotify makes a new generation count as started when it sends
	// READY=1 to its NOTIFY_SOCKET, instead of after Interval; it counts as
	// failed when it exits first or is silent for ReadyTimeout.
	ReadyByNotify bool
	// ReadyTimeout bounds the wait for READY=1; 0 means one minute.
	ReadyTimeout time.Duration
	// NotifySockets gives every worker a NOTIFY_SOCKET of its own, made in
	// NotifyDir ("" for the system's temporary directory), on which it may
	// send READY=1, STATUS=, WATCHDOG=1 and STOPPING=1. Only messages from the
	// worker or its descendants are accepted. ReadyByNotify and
	// WorkerWatchdog imply it.
	NotifySockets bool
	NotifyDir     string
	// WorkerWatchdog, when positive, is passed to workers as WATCHDOG_USEC. A
	// worker that has sent WATCHDOG=1 and is then silent this long is killed
	// with SIGABRT and replaced.
	WorkerWatchdog time.Duration
	// Heartbeat, when positive, is how often the Observer gets a Heartbeat
	// event while the loop runs: proof of a live loop, for a watchdog.
	Heartbeat time.Duration

	// Workers, when positive, runs a pool (see pool.go): that many workers
	// per generation, each in a slot of its own. 0 is 0.35's single worker,
	// with nothing of the pool in its environment, status file or log.
	Workers int
	// Rolling makes a pool's restart replace its workers MaxSurge at a time
	// (0 means 1) rather than the whole generation at once.
	Rolling  bool
	MaxSurge int
	// Tasks, when set, carries functions Run calls on its goroutine between
	// two steps of the loop: for the owner of the supervisor to act where
	// the supervisor's state is consistent (a self-upgrade snapshots it and
	// execs there). A task must not block for long.
	Tasks <-chan func()
	// OtherChild, when set, is told of the exit of every child that is not
	// a worker, and reports whether the child was its own (a self-upgrade's
	// preflight): Run reaps every child, and logs the exits of others.
	OtherChild func(pid int, status syscall.WaitStatus) bool
}

// EventKind names a change in the supervisor's generations.
type EventKind int

const (
	// Spawned: a new generation's worker was started (Generation, PID).
	Spawned EventKind = iota
	// Started: the new generation counts as started and now serves.
	Started
	// StartFailed: a new generation exited before it counted as started, or
	// could not be executed (PID 0); it will be retried.
	StartFailed
	// Reloading: a restart was requested (HUP or auto-restart).
	Reloading
	// Reloaded: the old generations of a restart have been signalled.
	Reloaded
	// Exited: a worker exited (Generation, PID, Status).
	Exited
	// Stopping: the supervisor received TERM or INT and is stopping.
	Stopping
	// WorkerStatus: a worker sent STATUS= (Generation, PID, Text).
	WorkerStatus
	// Heartbeat: the loop is alive (see Config.Heartbeat).
	Heartbeat
	// WorkerStarted: a pool's worker counted as started in its slot
	// (Generation, PID); Started follows once every slot runs Generation.
	WorkerStarted
	// Scaled: a pool's number of workers was changed (SIGTTIN, SIGTTOU).
	Scaled
)

// Event is a change in the supervisor's generations.
type Event struct {
	Kind       EventKind
	Generation int
	PID        int
	Status     syscall.WaitStatus
	// Err says why a start failed, when Kind is StartFailed.
	Err error
	// Text is the worker's STATUS= for WorkerStatus.
	Text string
	// Summary is a one-line account of the generations after the event,
	// such as "generation 7 (pid 1234) serving; 1 old generation draining".
	Summary string
	// Ready is true once a generation has first counted as started; with
	// Kind it tells a service manager when to say READY=1.
	Ready bool
}

type worker struct {
	pid, gen int
	started  time.Time
	// sent is the last signal the worker was told to go with. The same
	// signal twice makes many servers abandon their drain, so nobody gets it.
	sent syscall.Signal
	// killAt is when the worker gets SIGKILL, once signalled with a
	// KillTimeout; zero otherwise.
	killAt time.Time
	// notify is the worker's own NOTIFY_SOCKET, if it has one.
	notify *notify.WorkerSocket
	// status is the worker's last STATUS=.
	status string
	// watchdogAt is when the worker's watchdog expires, once it has sent
	// WATCHDOG=1.
	watchdogAt time.Time
	// failedStart: the worker never counted as started (no READY=1 in
	// time) and was told to go; its exit ends a failed start.
	failedStart bool
	// In a pool: the worker's slot, when it counts as started (zero once it
	// has, or for a worker not starting), and when it is to get
	// SignalOnHUP (KILL_OLD_DELAY after its replacement started).
	slot     int
	readyAt  time.Time
	signalAt time.Time
}

// workerMessage is a notification from a worker, for the loop.
type workerMessage struct {
	pid int
	msg notify.Message
}

// Supervisor runs the generations. Its state is owned by the goroutine in Run.
type Supervisor struct {
	cfg  Config
	sys  sys
	log  io.Writer
	base environment
	// settings are those of the envdir as last read (see readEnv).
	settings settings

	// loopState is everything the loop decides by that must survive an
	// execve of this process (see Snapshot and Restore).
	loopState
	// restored: the state came from Restore, and Run carries on from it.
	restored bool
	// offMainThread: a worker was forked off the main thread, and would get
	// its Pdeathsig at an execve of this process (see spawnWith).
	offMainThread bool
	messages      chan workerMessage
	quit          chan struct{}    // closed when Run returns
	now           func() time.Time // for tests

	// record is what View reports beyond the loop's own state.
	record record

	// Floods of these cost a line and a count, not a line each.
	ignoredNotify *ratelog.Limiter
	orphanExits   *ratelog.Limiter

	// statusStale: the status file no longer lists the live generations;
	// flushStatus rewrites it once per turn of the loop.
	statusStale bool
}

// loopState is the supervisor's state between two wakes of its loop. It is
// one struct so that Snapshot and Restore cannot miss a field: a test fails
// when a field is added here without being carried in State.
type loopState struct {
	generation int             // SERVER_STARTER_GENERATION of the last start attempt
	current    *worker         // the serving generation
	starting   *worker         // a new generation not yet counted as started
	old        map[int]*worker // older generations, by pid, still alive
	readyAt    time.Time       // when starting counts as started
	retryAt    time.Time       // when to try starting again after a failure
	failures   int             // failed starts in a row, for the backoff
	restarting bool            // the start in progress replaces current
	killOldAt  time.Time       // when to signal old (kill-old-delay)
	hupPending bool            // a HUP arrived during a restart
	stopping   bool            // TERM or INT received
	lastStart  time.Time       // when a generation last counted as started
	autoAt     time.Time       // next auto-restart check
	statusMade bool            // we created the status file
	everReady  bool            // a generation has counted as started
	beatAt     time.Time       // next Heartbeat
	pool       *pool           // with Config.Workers: the slots; current and starting are nil
}

// New returns a supervisor for cfg; it starts nothing until Run. Call
// cfg.Check first to fail before binding sockets: Run reports a worker that
// cannot be executed only when it starts the first one.
func New(cfg Config) (*Supervisor, error) {
	if cfg.SignalOnHUP == 0 {
		cfg.SignalOnHUP = syscall.SIGTERM
	}
	if cfg.SignalOnTERM == 0 {
		cfg.SignalOnTERM = syscall.SIGTERM
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = time.Minute
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = time.Minute
	}
	if cfg.ReadyByNotify || cfg.WorkerWatchdog > 0 {
		// Without a socket of its own the worker's WATCHDOG=1 would go
		// nowhere, and the watchdog would silently never fire.
		cfg.NotifySockets = true
	}
	s := &Supervisor{
		cfg:  cfg,
		sys:  realSys,
		log:  cfg.Log,
		base: newEnvironment(cfg.Env),
		now:  time.Now,
		loopState: loopState{
			old: map[int]*worker{},
		},

		messages: make(chan workerMessage, 16),
		quit:     make(chan struct{}),
	}
	if s.log == nil {
		s.log = os.Stderr
	}
	if cfg.Workers > 0 {
		s.pool = newPool(cfg.Workers)
	}
	s.ignoredNotify = s.limiter("notify messages ignored")
	s.orphanExits = s.limiter("processes that were not workers exited")
	if len(cfg.Command) == 0 || cfg.Command[0] == "" {
		return nil, errors.New("no worker command given")
	}
	return s, nil
}

// Check fails when the worker could not be started now: no command, a
// directory that is not one, a command that is not found or not executable.
// Call it before binding sockets, so that a typo leaves nothing behind.
func (cfg Config) Check() error {
	if len(cfg.Command) == 0 || cfg.Command[0] == "" {
		return errors.New("no worker command given")
	}
	if cfg.Dir != "" {
		if st, err := os.Stat(cfg.Dir); err != nil {
			return fmt.Errorf("worker directory: %w", err)
		} else if !st.IsDir() {
			return fmt.Errorf("worker directory %s is not a directory", cfg.Dir)
		}
	}
	return cfg.checkCommand()
}

// checkCommand fails when the worker command cannot be executed now, so that
// a typo is an error at start-up rather than a worker failing to start.
func (cfg Config) checkCommand() error {
	name := cfg.Command[0]
	path, err := withEnvDir(newEnvironment(cfg.Env)).lookPath(name)
	if err != nil {
		return fmt.Errorf("server program %s: %w", name, unwrapPathError(err))
	}
	if !filepath.IsAbs(path) && cfg.Dir != "" {
		path = filepath.Join(cfg.Dir, path)
	}
	st, err := os.Stat(path)
	switch {
	case err != nil:
		return fmt.Errorf("server program %s: %w", name, unwrapPathError(err))
	case !st.Mode().IsRegular():
		return fmt.Errorf("server program %s is not a regular file", name)
	case unix.Access(path, unix.X_OK) != nil || st.Mode()&0o111 == 0:
		return fmt.Errorf("server program %s is not executable", name)
	}
	return nil
}

// Run starts the first generation (for a supervisor from Restore: reaps the
// workers that exited during the exec, and starts none) and supervises until a TERM or INT arrives
// on signals.Stop and every generation has exited. It acts on SIGHUP,
// SIGTERM, SIGINT, SIGQUIT (as TERM) and SIGCHLD from signals and ignores the
// others; the caller routes the process's signals there (NotifySignals). A
// pending stop signal is acted on before anything else. Run returns an error only when
// the first worker cannot be executed at all; later failures are retried.
// The status file, if Run created it, is removed before Run returns.
func (s *Supervisor) Run(signals Signals) error {
	defer s.removeStatusFile()
	defer s.orphanExits.Flush()
	defer s.ignoredNotify.Flush()
	defer close(s.quit)
	if s.sys.adopt != nil {
		if err := s.sys.adopt(); err != nil {
			s.logf("failed to become the reaper of orphaned worker processes: %v", err)
		}
	}
	// The Go runtime makes its poller (an epoll and an eventfd descriptor)
	// when the first timer is armed, and dies if it cannot. Make it now,
	// while descriptors are available, rather than at the first deadline,
	// which may come when they are exhausted (a retry after EMFILE).
	time.AfterFunc(time.Hour, func() {}).Stop()
	if s.restored {
		s.resume()
	} else {
		if s.cfg.Heartbeat > 0 {
			s.beatAt = s.now()
		}
		if err := s.firstSpawn(); err != nil {
			return err
		}
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for !s.done() {
		s.flushStatus()
		s.scheduleAutoRestart()
		if next, ok := s.nextDeadline(); ok {
			timer.Reset(max(next.Sub(s.now()), 0))
		} else {
			timer.Stop()
		}
		select {
		case sig := <-signals.Stop:
			s.handleSignal(sig)
		case sig := <-signals.Reload:
			s.handleSignal(sig)
		case sig := <-signals.Child:
			s.handleSignal(sig)
		case sig := <-signals.Scale:
			s.handleSignal(sig)
		case m := <-s.messages:
			s.handleMessage(m)
		case task := <-s.cfg.Tasks:
			// A task may exec this process.
			s.flushStatus()
			task()
		case <-timer.C:
		}
		// A child's exit or a TERM that is already pending comes before any
		// deadline: a worker that has died must not count as started. A TERM
		// comes before all else, whatever floods the other channels.
		for pending := true; pending; {
			select {
			case sig := <-signals.Stop:
				s.handleSignal(sig)
				continue
			default:
			}
			select {
			case sig := <-signals.Stop:
				s.handleSignal(sig)
			case sig := <-signals.Reload:
				s.handleSignal(sig)
			case sig := <-signals.Child:
				s.handleSignal(sig)
			case sig := <-signals.Scale:
				s.handleSignal(sig)
			case m := <-s.messages:
				s.handleMessage(m)
			default:
				pending = false
			}
		}
		s.runDeadlines()
	}
	s.flushStatus()
	s.ignoredNotify.Flush()
	s.orphanExits.Flush()
	s.logf("exiting")
	return nil
}

// resume starts a restored supervisor's loop where Snapshot left it.
func (s *Supervisor) resume() {
	// The settings of the envdir as it is now, as at any start attempt.
	s.readEnv()
	live := []*worker{s.current, s.starting}
	if s.pool != nil {
		for _, sl := range s.pool.slots {
			live = append(live, sl.cur, sl.next)
		}
	}
	for _, w := range live {
		if w != nil && w.notify != nil {
			s.listen(w.pid, w.notify)
		}
	}
	for _, pid := range sortedPIDs(s.old) {
		if w := s.old[pid]; w.notify != nil {
			s.listen(pid, w.notify)
		}
	}
	switch {
	case s.cfg.Heartbeat <= 0:
		s.beatAt = time.Time{}
	case s.beatAt.IsZero():
		s.beatAt = s.now()
	}
	// A worker that exited during the exec is a zombie whose SIGCHLD was
	// lost: the new image's runtime unblocks SIGCHLD while its disposition is
	// still the default, ignore.
	s.handleSignal(syscall.SIGCHLD)
}

// Stopping reports whether TERM, INT or QUIT was received. Call it from the
// loop's goroutine (a task).
func (s *Supervisor) Stopping() bool { return s.stopping }

func (s *Supervisor) done() bool {
	if s.pool != nil && s.pool.workers() > 0 {
		return false
	}
	return s.stopping && s.current == nil && s.starting == nil && len(s.old) == 0
}

func (s *Supervisor) handleSignal(sig os.Signal) {
	switch sig {
	case syscall.SIGCHLD:
		for {
			pid, status, ok := s.sys.reap()
			if !ok {
				return
			}
			s.exited(pid, status)
		}
	case syscall.SIGHUP:
		if s.pool != nil {
			s.poolHUP()
			return
		}
		s.hup()
	case syscall.SIGTTIN, syscall.SIGTTOU:
		if s.pool != nil {
			s.poolScale(sig.(syscall.Signal))
		}
	case syscall.SIGTERM:
		s.stop("TERM", s.cfg.SignalOnTERM)
	case syscall.SIGINT:
		s.stop("INT", syscall.SIGTERM)
	case syscall.SIGQUIT:
		s.stop("QUIT", s.cfg.SignalOnTERM)
	}
}

func (s *Supervisor) hup() {
	switch {
	case s.stopping:
	case s.starting != nil || !s.killOldAt.IsZero():
		// One more restart follows the one in progress, however many HUPs
		// arrive meanwhile: the new worker then serves what they asked for.
		s.hupPending = true
	case !s.retryAt.IsZero():
		// Waiting to retry a failed start: retry now; the operator may have
		// fixed what failed.
		s.logf("received HUP, spawning a new worker")
		s.observe(Event{Kind: Reloading})
		s.failures = 0
		s.retryAt = time.Time{}
		s.spawn()
	default:
		s.logf("received HUP, spawning a new worker")
		s.restart()
	}
}

// restart moves the serving generation to the old ones and starts a new one.
func (s *Supervisor) restart() {
	s.restartWith(s.readEnv())
}

// restartWith is restart with an overlay just read by readEnv.
func (s *Supervisor) restartWith(env environment) {
	s.observe(Event{Kind: Reloading})
	if s.current != nil {
		s.old[s.current.pid] = s.current
		s.current = nil
	}
	s.restarting = true
	s.failures = 0
	s.autoAt = time.Time{}
	s.spawnWith(env)
}

// spawn starts the next generation's worker. An exec failure counts as a
// failed start, except for the very first, which is returned.
func (s *Supervisor) spawn() error {
	return s.spawnWith(s.readEnv())
}

// readEnv reads the envdir over the base environment and keeps the settings
// the loop needs. It is read once per start attempt (and once when an
// auto-restart falls due), not at every wake: the directory may hold
// thousands of files, and the loop wakes for every worker notification.
func (s *Supervisor) readEnv() environment {
	env := readEnvDir(s.base, s.sys.readDir, s.logf)
	s.settings = settingsOf(env, s.base, s.logf)
	return env
}

// spawnWith starts the next generation's worker with env, an overlay read by
// readEnv.
func (s *Supervisor) spawnWith(env environment) error {
	s.retryAt = time.Time{}
	s.generation++
	env["SERVER_STARTER_PORT"] = s.cfg.PortEnv
	env["SERVER_STARTER_GENERATION"] = strconv.Itoa(s.generation)
	w, err := s.startWorker(env, s.generation)
	if err != nil {
		if s.generation == 1 {
			return err
		}
		s.logf("%v", err)
		s.failed(s.now())
		s.observe(Event{Kind: StartFailed, Generation: s.generation, Err: err})
		return nil
	}
	s.logf("starting new worker %d", w.pid)
	s.starting = w
	if s.cfg.ReadyByNotify {
		s.readyAt = w.started.Add(s.cfg.ReadyTimeout)
	} else {
		s.readyAt = w.started.Add(s.cfg.Interval)
	}
	s.observe(Event{Kind: Spawned, Generation: s.generation, PID: w.pid})
	return nil
}

// startWorker forks and executes a worker of generation gen with env, and
// listens on its notify socket, if it has one.
func (s *Supervisor) startWorker(env environment, gen int) (*worker, error) {
	if s.cfg.WorkerWatchdog > 0 {
		env["WATCHDOG_USEC"] = strconv.FormatInt(s.cfg.WorkerWatchdog.Microseconds(), 10)
	}
	started := s.now()
	path, err := env.lookPath(s.cfg.Command[0])
	var ns *notify.WorkerSocket
	if err == nil && s.cfg.NotifySockets {
		if ns, err = notify.Listen(s.cfg.NotifyDir); err == nil {
			env["NOTIFY_SOCKET"] = ns.Path()
		}
	}
	var pid int
	if err == nil && !s.offMainThread && s.sys.onMainThread != nil && !s.sys.onMainThread() {
		// Said once: the loop runs where it runs. The fork still happens;
		// only an exec of this process would harm the worker, and
		// CheckExec refuses that.
		s.offMainThread = true
		s.logf("warning: starting workers off the main thread (thread %d): they will get %s if this process execs itself", unix.Gettid(), logName(s.cfg.SignalOnTERM, s.cfg.SignalOnTERMName))
	}
	if err == nil {
		pid, err = s.sys.spawn(path, s.cfg.Command, &syscall.ProcAttr{
			Dir:   s.cfg.Dir,
			Env:   env.list(),
			Files: s.cfg.Files,
			// Workers are not left serving unnoticed when the supervisor dies
			// without stopping them (kill -9, a crash): the kernel sends them
			// SignalOnTERM, as our TERM would, so that they drain and exit and
			// free the sockets for the next supervisor. (Adopting them instead
			// would need their sockets back, which a new supervisor cannot
			// get.) A worker that ignores the signal survives it, as it would
			// survive our TERM.
			//
			// Linux sends the signal when the *thread* that forked exits, and
			// an execve of this process ends every thread but the one that
			// execs. So the fork must happen on the main thread, the only one
			// that lives as long as the process and the one that execs it:
			// the loop runs on the main goroutine, which the init in sys.go
			// locks to the main thread. Go threads do not otherwise exit here
			// (only one whose locked goroutine exits does).
			Sys: &syscall.SysProcAttr{Pdeathsig: s.cfg.SignalOnTERM},
		})
	}
	if err != nil && ns != nil {
		ns.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("failed to exec %s: %w", s.cfg.Command[0], unwrapPathError(err))
	}
	w := &worker{pid: pid, gen: gen, started: started, notify: ns}
	if ns != nil {
		s.listen(pid, ns)
	}
	return w, nil
}

// listen forwards the worker's notifications to the loop until its socket
// is closed (when the worker has exited) or Run returns.
func (s *Supervisor) listen(pid int, ns *notify.WorkerSocket) {
	ns.Dropped = func(err error) { s.ignoredNotify.Log(err.Error()) }
	ns.Watch(pid)
	go s.forward(pid, ns.Messages())
}

// statusEvery is the least time between two STATUS= of one worker that the
// loop sees: a worker flooding STATUS= then costs the loop, and systemd,
// at most a few updates a second.
const statusEvery = 100 * time.Millisecond

// forward passes a worker's notifications to the loop. A message that is
// only a STATUS= is held back while one was passed less than statusEvery
// ago, and replaced by newer ones meanwhile; any other message goes at once,
// after a held status unless it carries a newer one, so that the loop sees
// them in order and the last status always arrives.
func (s *Supervisor) forward(pid int, messages <-chan notify.Message) {
	var held *notify.Message
	var lastStatus time.Time
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var due <-chan time.Time // timer.C while a status is held
	send := func(m notify.Message) bool {
		if _, ok := m.Fields["STATUS"]; ok {
			lastStatus = time.Now()
		}
		select {
		case s.messages <- workerMessage{pid, m}:
			return true
		case <-s.quit:
			return false
		}
	}
	for {
		select {
		case m, ok := <-messages:
			if !ok {
				if held != nil {
					send(*held)
				}
				return
			}
			_, hasStatus := m.Fields["STATUS"]
			if !m.Ready && !m.Stopping && !m.Watchdog {
				if !hasStatus {
					continue // nothing the loop acts on
				}
				if wait := statusEvery - time.Since(lastStatus); held != nil || wait > 0 {
					if held == nil {
						timer.Reset(wait)
						due = timer.C
					}
					held = &m
					continue
				}
			} else if held != nil {
				if !hasStatus && !send(*held) {
					return
				}
				held, due = nil, nil
				timer.Stop()
			}
			if !send(m) {
				return
			}
		case <-due:
			due = nil
			if held != nil {
				m := *held
				held = nil
				if !send(m) {
					return
				}
			}
		}
	}
}

// handleMessage acts on a worker's READY=1, STATUS=, WATCHDOG=1, STOPPING=1.
func (s *Supervisor) handleMessage(m workerMessage) {
	w := s.worker(m.pid)
	if w == nil {
		return // it has exited since
	}
	if _, ok := m.msg.Fields["STATUS"]; ok {
		w.status = m.msg.Status
		s.observe(Event{Kind: WorkerStatus, Generation: w.gen, PID: w.pid, Text: w.status})
	}
	if m.msg.Watchdog && s.cfg.WorkerWatchdog > 0 {
		w.watchdogAt = s.now().Add(s.cfg.WorkerWatchdog)
	}
	if m.msg.Stopping {
		s.logf("worker %d is stopping", w.pid)
	}
	if m.msg.Ready && w == s.starting && s.cfg.ReadyByNotify && !s.stopping {
		s.started()
	}
	if m.msg.Ready && s.pool != nil && s.cfg.ReadyByNotify && !s.stopping {
		s.poolReady(w)
	}
}

// worker finds a live worker by pid.
func (s *Supervisor) worker(pid int) *worker {
	if s.pool != nil {
		if w := s.pool.worker(pid); w != nil {
			return w
		}
	}
	for _, w := range []*worker{s.starting, s.current, s.old[pid]} {
		if w != nil && w.pid == pid {
			return w
		}
	}
	return nil
}

// gone releases what a worker held once it has exited.
func (w *worker) gone() {
	if w.notify != nil {
		w.notify.Close()
	}
}

func unwrapPathError(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// failed schedules the next start after a failed one, with exponential
// backoff from max(interval, 100ms) up to MaxBackoff. The first retry comes
// one interval after the failed start, as in 0.35.
func (s *Supervisor) failed(startedAt time.Time) {
	s.failures++
	delay := s.backoff(s.failures)
	s.retryAt = startedAt.Add(delay)
	if delay > s.cfg.Interval && s.failures > 1 {
		s.logf("%d failed starts in a row, next attempt in %ss", s.failures, formatSeconds(delay))
	}
}

// backoff is the delay before the next start after failures failed ones in
// a row: max(interval, 100ms), doubled for each failure after the first,
// up to MaxBackoff.
func (s *Supervisor) backoff(failures int) time.Duration {
	delay := max(s.cfg.Interval, 100*time.Millisecond)
	for i := 1; i < failures && delay < s.cfg.MaxBackoff; i++ {
		delay *= 2
	}
	return min(delay, s.cfg.MaxBackoff)
}

// started makes the starting worker the serving generation.
func (s *Supervisor) started() {
	w := s.starting
	s.starting = nil
	s.readyAt = time.Time{}
	s.current = w
	s.lastStart = s.now()
	s.everReady = true
	s.updateStatus()
	s.observe(Event{Kind: Started, Generation: w.gen, PID: w.pid})
	if !s.restarting {
		s.afterRestart()
		return
	}
	s.restarting = false
	s.logf("new worker is now running, sending %s to old workers:%s", logName(s.cfg.SignalOnHUP, s.cfg.SignalOnHUPName), pidList(notSent(s.old, s.cfg.SignalOnHUP), "none"))
	if delay := s.settings.killOldDelay; delay > 0 {
		s.logf("sleeping %s secs before killing old workers", formatSeconds(delay))
		s.killOldAt = s.now().Add(delay)
		return
	}
	s.killOld()
}

func (s *Supervisor) killOld() {
	s.killOldAt = time.Time{}
	s.logf("killing old workers")
	s.signalAll(notSent(s.old, s.cfg.SignalOnHUP), s.cfg.SignalOnHUP)
	if s.current != nil {
		s.observe(Event{Kind: Reloaded, Generation: s.current.gen, PID: s.current.pid})
	}
	s.afterRestart()
}

// afterRestart starts the restart that a HUP asked for during the last one.
func (s *Supervisor) afterRestart() {
	if s.hupPending && !s.stopping {
		s.hupPending = false
		s.logf("received HUP, spawning a new worker")
		s.restart()
	}
}

func (s *Supervisor) exited(pid int, status syscall.WaitStatus) {
	if w := s.worker(pid); w != nil {
		w.gone()
	}
	if s.pool != nil && s.pool.worker(pid) != nil {
		s.poolExited(pid, status)
		return
	}
	switch {
	case s.starting != nil && pid == s.starting.pid:
		w := s.starting
		s.starting = nil
		s.readyAt = time.Time{}
		if s.stopping {
			s.logf("worker %d died, status:%d", pid, status)
			return
		}
		s.logf("new worker %d seems to have failed to start, exit status:%d", pid, status)
		s.failed(w.started)
		s.observe(Event{Kind: StartFailed, Generation: w.gen, PID: pid, Status: status,
			Err: fmt.Errorf("new worker %d exited with status %d before it was ready", pid, status)})
	case s.current != nil && pid == s.current.pid:
		w := s.current
		s.current = nil
		s.updateStatus()
		s.observe(Event{Kind: Exited, Generation: w.gen, PID: pid, Status: status})
		s.logf("worker %d died unexpectedly with status:%d, restarting", pid, status)
		s.noteRestart(-1)
		// A worker that dies soon after it started is failing to start, and
		// is retried with backoff; one that ran a while is restarted at once.
		if s.now().Sub(w.started) < s.cfg.Interval+time.Second {
			s.failed(w.started)
		} else {
			s.failures = 0
			s.spawn()
		}
	case s.old[pid] != nil:
		w := s.old[pid]
		delete(s.old, pid)
		s.updateStatus()
		s.observe(Event{Kind: Exited, Generation: w.gen, PID: pid, Status: status})
		if w.failedStart {
			// Never an old worker: notReady gave up on its start.
			s.logf("new worker %d seems to have failed to start, exit status:%d", pid, status)
		} else if s.stopping {
			s.logf("worker %d died, status:%d", pid, status)
		} else {
			s.logf("old worker %d died, status:%d", pid, status)
		}
	case s.cfg.OtherChild != nil && s.cfg.OtherChild(pid, status):
	default:
		// Another child: a worker's orphaned descendant, re-parented to us
		// (see sys.adopt), or the command of a --log-file pipe that died.
		s.orphanExits.Log(fmt.Sprintf("process %d (not a worker) exited, status:%d", pid, status))
	}
}

func (s *Supervisor) stop(name string, sig syscall.Signal) {
	if s.stopping {
		return
	}
	s.stopping = true
	s.observe(Event{Kind: Stopping})
	if s.pool != nil {
		s.pool.release(s.old)
	}
	for _, w := range []*worker{s.current, s.starting} {
		if w != nil {
			s.old[w.pid] = w
		}
	}
	s.current, s.starting = nil, nil
	s.readyAt, s.retryAt, s.killOldAt, s.autoAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	given := ""
	if name == "TERM" {
		given = s.cfg.SignalOnTERMName
	}
	s.logf("received %s, sending %s to all workers:%s", name, logName(sig, given), pidList(s.old, ""))
	s.signalAll(notSent(s.old, sig), sig)
}

func (s *Supervisor) signalAll(workers map[int]*worker, sig syscall.Signal) {
	for _, pid := range sortedPIDs(workers) {
		if err := s.sys.kill(pid, sig); err != nil {
			s.logf("failed to send %s to worker %d: %v", signalName(sig), pid, err)
		}
		workers[pid].sent = sig
		if s.cfg.KillTimeout > 0 && workers[pid].killAt.IsZero() {
			workers[pid].killAt = s.now().Add(s.cfg.KillTimeout)
		}
	}
}

// scheduleAutoRestart arms the auto-restart check, as 0.35 does: a restart
// is due AUTO_RESTART_INTERVAL after the last start once no old generation is
// left, or after twice that in any case. The settings are those read at the
// last start attempt; runDeadlines reads them again when the restart falls
// due.
func (s *Supervisor) scheduleAutoRestart() {
	s.autoAt = time.Time{}
	if s.pool != nil && !s.poolSettled() {
		return
	}
	if s.stopping || (s.pool == nil && (s.current == nil || s.starting != nil)) || !s.retryAt.IsZero() || !s.killOldAt.IsZero() {
		return
	}
	if !s.settings.autoRestart {
		return
	}
	interval := s.settings.autoRestartInterval
	if len(s.old) == 0 {
		s.autoAt = s.lastStart.Add(interval)
	} else {
		s.autoAt = s.lastStart.Add(2 * interval)
	}
}

func (s *Supervisor) nextDeadline() (time.Time, bool) {
	var next time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	consider(s.readyAt)
	consider(s.retryAt)
	consider(s.killOldAt)
	consider(s.autoAt)
	consider(s.beatAt)
	if s.current != nil {
		consider(s.current.watchdogAt)
	}
	for _, w := range s.old {
		consider(w.killAt)
		consider(w.signalAt)
	}
	if s.pool != nil {
		s.pool.deadlines(consider)
	}
	return next, !next.IsZero()
}

func (s *Supervisor) runDeadlines() {
	// The signal just handled may have changed what is due.
	s.scheduleAutoRestart()
	now := s.now()
	due := func(t time.Time) bool { return !t.IsZero() && !now.Before(t) }
	for _, pid := range sortedPIDs(s.old) {
		if w := s.old[pid]; due(w.killAt) {
			w.killAt = time.Time{}
			s.logf("worker %d did not exit within %ss of its signal, sending KILL", pid, formatSeconds(s.cfg.KillTimeout))
			s.sys.kill(pid, syscall.SIGKILL)
		}
	}
	if s.starting != nil && due(s.readyAt) {
		if s.cfg.ReadyByNotify {
			s.notReady()
		} else {
			s.started()
		}
	}
	if w := s.current; w != nil && due(w.watchdogAt) && !s.stopping {
		s.current = nil
		s.abortUnwatched(w)
		s.failed(w.started)
	}
	if due(s.beatAt) {
		s.beatAt = now.Add(s.cfg.Heartbeat)
		s.observe(Event{Kind: Heartbeat})
	}
	if s.pool != nil {
		s.poolDeadlines(now)
	}
	if due(s.retryAt) && !s.stopping {
		s.spawn()
	}
	if due(s.killOldAt) {
		s.killOld()
	}
	if due(s.autoAt) {
		// 0.35 decides with the envdir as it is now: the interval may have
		// been changed, or auto-restart turned off, since the last start.
		env := s.readEnv()
		s.scheduleAutoRestart()
		if !due(s.autoAt) {
			return
		}
		interval := s.settings.autoRestartInterval
		if len(s.old) == 0 {
			s.logf("autorestart triggered (interval=%s)", formatSeconds(interval))
		} else {
			s.logf("autorestart triggered (forced, interval=%s)", formatSeconds(interval))
		}
		if s.pool != nil {
			s.roll()
			return
		}
		s.restartWith(env)
	}
}

// updateStatus marks the status file out of date. It is rewritten once per
// turn of the loop (flushStatus), not at each change: a rename on a busy
// disk blocks for milliseconds, and a pool's restart changes it once per
// worker started and per worker reaped, often several in one turn.
func (s *Supervisor) updateStatus() {
	s.statusStale = s.cfg.StatusFile != ""
}

// flushStatus writes the status file if updateStatus marked it out of date.
func (s *Supervisor) flushStatus() {
	if !s.statusStale {
		return
	}
	s.statusStale = false
	if s.pool != nil {
		s.poolWriteStatus()
		return
	}
	genPID := map[int]int{}
	if s.current != nil {
		genPID[s.current.gen] = s.current.pid
	}
	for _, w := range s.old {
		genPID[w.gen] = w.pid
	}
	if err := writeStatusFile(s.cfg.StatusFile, genPID); err != nil {
		s.logf("failed to update the status file: %v", err)
		return
	}
	s.statusMade = true
}

func (s *Supervisor) removeStatusFile() {
	if s.statusMade {
		os.Remove(s.cfg.StatusFile)
	}
}

// abortUnwatched sends SIGABRT to a serving worker whose --worker-watchdog
// ran out, taken out of service by the caller, as an old worker.
func (s *Supervisor) abortUnwatched(w *worker) {
	s.logf("worker %d sent no WATCHDOG=1 for %ss, aborting it and restarting", w.pid, formatSeconds(s.cfg.WorkerWatchdog))
	w.watchdogAt = time.Time{}
	s.old[w.pid] = w
	s.signalAll(map[int]*worker{w.pid: w}, syscall.SIGABRT)
	s.updateStatus()
}

// dismissSilent tells a starting worker that did not send READY=1 within
// ReadyTimeout to go, as an old worker, and returns why its start failed.
func (s *Supervisor) dismissSilent(w *worker) error {
	err := fmt.Errorf("new worker %d did not report ready within %ss", w.pid, formatSeconds(s.cfg.ReadyTimeout))
	s.logf("%v", err)
	w.failedStart = true
	s.old[w.pid] = w
	s.signalAll(map[int]*worker{w.pid: w}, syscall.SIGTERM)
	return err
}

// notReady gives up on a starting worker that did not send READY=1 in time:
// it is told to go like an old generation, and the start is retried.
func (s *Supervisor) notReady() {
	w := s.starting
	s.starting = nil
	s.readyAt = time.Time{}
	err := s.dismissSilent(w)
	s.failed(w.started)
	s.observe(Event{Kind: StartFailed, Generation: w.gen, PID: w.pid, Err: err})
}

func (s *Supervisor) observe(e Event) {
	if e.Kind == Started || e.Kind == Reloaded {
		// Whoever is told that a generation serves (the parent of
		// --daemonize, systemd's READY=1) may read the status file next.
		s.flushStatus()
	}
	s.noteReload(e)
	if s.cfg.Observer != nil {
		e.Summary = s.summary()
		e.Ready = s.everReady
		s.cfg.Observer(e)
	}
}

// summary is a one-line account of the generations, for STATUS=.
func (s *Supervisor) summary() string {
	if s.pool != nil {
		return s.poolSummary()
	}
	var parts []string
	if s.stopping {
		parts = append(parts, "stopping")
	}
	if w := s.current; w != nil {
		p := fmt.Sprintf("generation %d (pid %d) serving", w.gen, w.pid)
		if w.status != "" {
			p += ": " + w.status
		}
		parts = append(parts, p)
	}
	if w := s.starting; w != nil {
		parts = append(parts, fmt.Sprintf("generation %d (pid %d) starting", w.gen, w.pid))
	}
	if !s.retryAt.IsZero() {
		parts = append(parts, fmt.Sprintf("generation %d failed to start, retrying", s.generation))
	}
	// An old generation not yet told to go still serves: a restart is under
	// way, or its new generation failed to start.
	draining := 0
	for _, pid := range sortedPIDs(s.old) {
		if w := s.old[pid]; w.sent == 0 {
			parts = append(parts, fmt.Sprintf("generation %d (pid %d) still serving", w.gen, w.pid))
		} else {
			draining++
		}
	}
	switch {
	case draining == 1:
		parts = append(parts, "1 old generation draining")
	case draining > 1:
		parts = append(parts, fmt.Sprintf("%d old generations draining", draining))
	}
	if len(parts) == 0 {
		return "no worker running"
	}
	return strings.Join(parts, "; ")
}

func (s *Supervisor) logf(format string, args ...any) {
	fmt.Fprintf(s.log, format+"\n", args...)
}

// limiter rate-limits a kind of log line; what names them in its counts.
func (s *Supervisor) limiter(what string) *ratelog.Limiter {
	return &ratelog.Limiter{What: what, Write: func(line string) { s.logf("%s", line) }}
}

// notSent returns the workers that have not been sent sig yet.
func notSent(workers map[int]*worker, sig syscall.Signal) map[int]*worker {
	out := map[int]*worker{}
	for pid, w := range workers {
		if w.sent != sig {
			out[pid] = w
		}
	}
	return out
}

func sortedPIDs(workers map[int]*worker) []int {
	pids := make([]int, 0, len(workers))
	for pid := range workers {
		pids = append(pids, pid)
	}
	sort.Ints(pids)
	return pids
}

func pidList(workers map[int]*worker, empty string) string {
	pids := sortedPIDs(workers)
	if len(pids) == 0 {
		return empty
	}
	s := make([]string, len(pids))
	for i, pid := range pids {
		s[i] = strconv.Itoa(pid)
	}
	return strings.Join(s, ",")
}
