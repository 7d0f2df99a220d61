// Package service runs an ss-bridge server: its sockets, pid, status and log files, daemonizing, and the link to systemd.
package service

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"

	"github.com/ss-bridge/ss-bridge/activation"
	"github.com/ss-bridge/ss-bridge/supervisor"
	"golang.org/x/sys/unix"
)

// Config is a server to run, as the command line gives it. Its values have
// been checked, except what can only be checked once the environment is
// final (the worker command and directory: see supervisor.Config.Check).
type Config struct {
	// Supervisor configures the generation loop. Run sets its Env (ours
	// and Env below), PortEnv, Files, Observer, NotifySockets and Heartbeat.
	Supervisor supervisor.Config
	// Env is added to our environment to make the workers' (later entries
	// win): the options that 0.35 exports to the workers.
	Env []string
	// Specs are the sockets to bind, or to take from systemd.
	Specs    []activation.Spec
	Backlog  int
	PathMode os.FileMode
	// PidFile, when set, is locked and holds our pid while we run.
	PidFile string
	// LogFile, when set, is a file to append our and the workers' output
	// to, or "| command" to pipe it to.
	LogFile string
	// Daemonize runs the server in the background; it needs LogFile.
	Daemonize bool
	// ListenFDs passes the sockets as systemd does (LISTEN_FDS and
	// descriptors 3 and up) rather than as SERVER_STARTER_PORT says.
	ListenFDs bool
	// Version is ss-bridge's version, which a self-upgrade reports.
	Version string
}

// Run runs the server until TERM, INT or QUIT arrives on signals (from
// supervisor.NotifySignals, called before the options are even parsed, so
// that a signal arriving during start-up is acted on rather than killing
// us). Whatever fails before the first worker runs is returned with nothing
// left behind: no socket file, pid file or child. In the daemon started by
// --daemonize, Run is also where that daemon runs.
func Run(c Config, signals supervisor.Signals) (err error) {
	// One P. The runtime's monitor thread (sysmon) polls every 20 us while
	// any P is busy or in a system call, and it leaves a P in a system call
	// alone for 10 ms while another P is idle: with two Ps, each rename of
	// the status file (milliseconds on a busy disk) and each fork cost it
	// dozens of wakeups. With one, it retakes the P from a blocked call after
	// one tick and sleeps. The loop is one goroutine and never needed two.
	runtime.GOMAXPROCS(1)
	// And it sleeps 20 us at a time while the main thread forks: see
	// runtimeThreadSlack.
	slackenRuntimeThreads()
	// ALRM is caught and not acted on, as 0.35 does.
	ignored := make(chan os.Signal, 1)
	signal.Notify(ignored, syscall.SIGALRM)
	defer signal.Stop(ignored)
	// SIGPIPE is ignored, as 0.35 does, and the disposition survives exec:
	// workers written for start_server expect it ignored (a client hanging up
	// is an EPIPE for them, not death), and we must not die writing to a log
	// command that has gone.
	signal.Ignore(syscall.SIGPIPE)
	// A self-upgrade execs with USR2 and ALRM blocked on this thread, so
	// that one arriving then stays pending for the new image; the workers
	// forked from this thread would inherit the mask.
	unblockUpgradeSignals()
	if fd, ok := resumeFD(); ok {
		return resume(c, signals, fd)
	}

	daemon := os.Getenv(daemonStageEnv) == "2"
	os.Unsetenv(daemonStageEnv)
	// Descriptors our parent leaked to us are not the workers' to inherit.
	closeOnExecAbove(2)
	var ready *daemonReady
	if daemon {
		// Our stderr is /dev/null until the log is open: say what failed
		// to the foreground process, which prints it.
		ready = adoptReadyPipe()
		defer func() {
			if err != nil {
				ready.fail(err)
			}
		}()
	}
	sd, err := takeSystemd()
	if err != nil {
		return err
	}
	// Resolved now: by the time of an upgrade, a package manager may have
	// replaced the file, and the path is what names the new program.
	exe, err := executable()
	if err != nil {
		return err
	}

	// The workers' environment is ours once what systemd and the daemon
	// stages set for us alone has been removed from it.
	cfg, specs := c.Supervisor, c.Specs
	cfg.Env = append(os.Environ(), c.Env...)
	if err := cfg.Check(); err != nil {
		return err
	}

	if daemon && c.PidFile == "" {
		unix.Close(daemonPidFD) // a /dev/null placeholder
	}
	var pid *pidFile
	if c.PidFile != "" {
		if daemon {
			pid = adoptPidFile(c.PidFile, daemonPidFD)
		} else if pid, err = lockPidFile(c.PidFile); err != nil {
			return err
		}
	}
	// Registered first, so run last: the pid file goes, and its lock is
	// dropped, only once every other file (control socket, unix sockets) is
	// gone and the log command has had its say, so that whoever waits for
	// the lock (--stop, stop, a new server) finds nothing of ours left.
	pidWritten := false
	defer func() {
		switch {
		case pidWritten:
			pid.release()
		case err != nil:
			pid.abandon()
		}
	}()
	if cfg.StatusFile != "" && !daemon {
		if err := checkWritable(cfg.StatusFile); err != nil {
			return err
		}
	}

	// The control socket is the process's that runs the loop: with
	// --daemonize, the daemon's. Bound before the listening sockets, so that
	// one in use is the one line of a failed start.
	var ctl *control
	if path := ControlPath(c.PidFile, os.Getenv("RUNTIME_DIRECTORY")); path != "" && (daemon || !c.Daemonize) {
		if ctl, err = openControl(path); err != nil {
			return err
		}
		defer ctl.close()
	}

	// With --daemonize, the daemon opens the log, so that a log command is
	// its child, restarted by it when it exits.
	var log *logSink
	if c.LogFile != "" && (daemon || !c.Daemonize) {
		if log, err = openLog(c.LogFile); err != nil {
			return err
		}
		defer func() {
			if err != nil && log.redirected {
				fmt.Fprintf(os.Stderr, "failed to start: %v\n", err) // to the log
			}
			log.finish(err != nil)
		}()
	}

	var socks []activation.Socket
	if daemon {
		socks = adoptSockets(specs)
	} else {
		// 0.35 says "starting now" before binding; we say it once binding
		// has worked, with binding's warnings after it, so that a failure
		// is one line.
		var warnings strings.Builder
		socks, err = activation.Open(specs, sd.inheritedSockets(specs), activation.Options{Backlog: c.Backlog, PathMode: c.PathMode, Warn: &warnings})
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "start_server (pid:%d) starting now...\n%s", os.Getpid(), warnings.String())
		sd.store(socks)
		for _, s := range socks {
			if s.Pinned {
				fmt.Fprintf(os.Stderr, "socket is duplicated to file descriptor %d\n", s.Spec.WorkerFD)
			}
		}
	}
	defer activation.CloseAll(socks)

	// From here on, errors are reported where the log goes; the caller's
	// stderr is kept for the one line an early failure prints.
	if log != nil {
		if err := log.redirect(); err != nil {
			return err
		}
		log.watch()
	}
	if c.Daemonize && !daemon {
		err := daemonize(c.LogFile, socks, pid, signals.Stop)
		var runs *daemonRunsError
		if err != nil && !errors.As(err, &runs) {
			return err // the daemon has exited: remove what it may not have
		}
		for i := range socks {
			socks[i].Disown() // the daemon removes them when it exits
		}
		if pid != nil {
			pid.f.Close() // the daemon holds the lock now
			pid = nil
		}
		return err
	}
	if pid != nil {
		if err := pid.write(); err != nil {
			return err
		}
		pidWritten = true
	}
	// A result left by a server that crashed would look like an outcome of
	// our first upgrade.
	if c.PidFile != "" {
		os.Remove(ResultFile(c.PidFile))
	}

	srv := &server{c: c, signals: signals, sd: sd, pid: pid, log: log, socks: socks, ready: ready, exe: exe, ctl: ctl}
	return srv.run(cfg, supervisor.New)
}

// server is a running server: the one owner of everything a self-upgrade
// hands over to the next image of this process (see State).
type server struct {
	c       Config
	signals supervisor.Signals
	sd      *systemd
	pid     *pidFile
	log     *logSink
	socks   []activation.Socket
	ready   *daemonReady // in the daemon of --daemonize, until it has said so
	// exe is the absolute path we were started from, where an upgrade
	// finds the new program image.
	exe string
	sup *supervisor.Supervisor
	// tasks run on the supervisor's loop (see supervisor.Config.Tasks).
	tasks chan func()
	done  chan struct{} // closed when the loop has returned
	up    upgrade
	ctl   *control // the control socket, if there is one
}

// run wires the supervisor to the sockets, systemd and the daemon's parent,
// makes it with start (supervisor.New, or Restore for a resumed image) and
// runs it until it stops.
func (srv *server) run(cfg supervisor.Config, start func(supervisor.Config) (*supervisor.Supervisor, error)) error {
	c, sd := srv.c, srv.sd
	if c.ListenFDs {
		if err := listenFDsCommand(&cfg, srv.socks); err != nil {
			return err
		}
	} else {
		cfg.PortEnv = activation.PortEnv(srv.socks)
		cfg.Files = activation.Files(srv.socks)
	}
	var observers []func(supervisor.Event)
	if srv.ready != nil {
		observers = append(observers, srv.ready.observer(c.LogFile))
	}
	if sd.active() {
		cfg.NotifySockets = true
		if every, ok := sd.manager.WatchdogInterval(); ok {
			cfg.Heartbeat = every
		}
		startWait := cfg.Interval
		if cfg.ReadyByNotify {
			startWait = cfg.ReadyTimeout
		}
		sd.q = sd.queue()
		// STOPPING=1 and the last status should reach systemd, but a stuck
		// systemd must not keep us from exiting.
		defer func() {
			if err := sd.q.Close(notifyFlushTimeout); err != nil {
				fmt.Fprintf(os.Stderr, "sd_notify: %v\n", err)
			}
		}()
		observers = append(observers, sd.observer(startWait))
	}
	cfg.Observer = func(e supervisor.Event) {
		for _, o := range observers {
			o(e)
		}
	}
	if srv.log != nil {
		cfg.Log = srv.log.ownWriter()
	}
	srv.tasks = make(chan func(), 4)
	srv.done = make(chan struct{})
	defer close(srv.done)
	cfg.Tasks = srv.tasks
	cfg.OtherChild = srv.otherChild
	sup, err := start(cfg)
	if err != nil {
		return err
	}
	srv.sup = sup
	// The bridge's live heap is near zero; the default GOGC lets each
	// restart's garbage double RSS (4 to 9 MB over 1,000 restarts) before a
	// collection. Collecting sooner costs nothing measurable once serving;
	// before, in the image a self-upgrade has just executed, a collection
	// (at 0.8 MB) would delay the resume by milliseconds.
	debug.SetGCPercent(servingGCPercent)
	srv.serveControl()
	go srv.forwardUpgrades()
	defer srv.removeResult()
	defer srv.up.abandon()
	return sup.Run(srv.signals)
}

// checkWritable fails when the status file could not be written, by creating
// and removing a temporary file as the supervisor writes it through.
func checkWritable(statusFile string) error {
	// The temporary is renamed over the path: that fails at every update
	// for a directory, and 0.35 dies at its first. Say so at start instead.
	if st, err := os.Lstat(statusFile); err == nil && st.IsDir() {
		return fmt.Errorf("status file %s is a directory", statusFile)
	}
	f, err := supervisor.CreateStatusTemp(statusFile)
	if err != nil {
		return fmt.Errorf("status file %s is not writable: %w", statusFile, unwrap(err))
	}
	f.Close()
	return os.Remove(f.Name())
}

func unwrap(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// closeOnExecAbove marks every open descriptor above fd close-on-exec.
func closeOnExecAbove(fd int) {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range entries {
		if n, err := strconv.Atoi(e.Name()); err == nil && n > fd {
			unix.CloseOnExec(n)
		}
	}
}
