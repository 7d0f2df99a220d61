package cli

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/activation"
	"github.com/ss-bridge/ss-bridge/supervisor"
	"golang.org/x/sys/unix"
)

// serve runs the superdaemon until TERM or INT. Whatever fails before the
// first worker runs is returned with nothing left behind: no socket file,
// pid file or child.
func serve(o *Options) (err error) {
	// Signals are caught before anything is set up, so that a HUP or TERM
	// arriving during start-up is acted on rather than killing us. Each kind
	// has a channel of its own, so that a flood of one cannot crowd out a
	// TERM. QUIT stops the server as TERM does: Go's default action (a stack
	// dump and exit) would leave the pid, status and socket files behind.
	// ALRM is caught and not acted on, as 0.35 does.
	signals, stopSignals := supervisor.NotifySignals()
	defer stopSignals()
	ignored := make(chan os.Signal, 1)
	signal.Notify(ignored, syscall.SIGALRM)
	defer signal.Stop(ignored)
	// SIGPIPE is ignored, as 0.35 does, and the disposition survives exec:
	// workers written for start_server expect it ignored (a client hanging up
	// is an EPIPE for them, not death), and we must not die writing to a log
	// command that has gone.
	signal.Ignore(syscall.SIGPIPE)
	// The bridge's live heap is near zero; the default GOGC lets each
	// restart's garbage double RSS (4 to 9 MB over 1,000 restarts) before a
	// collection. Collecting sooner costs nothing measurable.
	debug.SetGCPercent(20)

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

	if o.Daemonize && o.LogFile == "" {
		return errors.New("--log-file option must be specified together with --daemonize")
	}
	if len(o.Command) == 0 {
		return errors.New("server program not specified")
	}
	cfg, specs, err := configure(o)
	if err != nil {
		return err
	}
	if err := cfg.Check(); err != nil {
		return err
	}

	if daemon && o.PidFile == "" {
		unix.Close(daemonPidFD) // a /dev/null placeholder
	}
	var pid *pidFile
	if o.PidFile != "" {
		if daemon {
			pid = adoptPidFile(o.PidFile, daemonPidFD)
		} else if pid, err = lockPidFile(o.PidFile); err != nil {
			return err
		}
	}
	defer func() {
		if err != nil {
			pid.abandon()
		}
	}()
	if o.StatusFile != "" && !daemon {
		if err := checkWritable(o.StatusFile); err != nil {
			return err
		}
	}

	// With --daemonize, the daemon opens the log, so that a log command is
	// its child, restarted by it when it exits.
	var log *logSink
	if o.LogFile != "" && (daemon || !o.Daemonize) {
		if log, err = openLog(o.LogFile); err != nil {
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
		socks, err = activation.Open(specs, sd.inheritedSockets(specs), activation.Options{Backlog: o.Backlog, PathMode: o.PathMode, Warn: &warnings})
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
	if o.Daemonize && !daemon {
		err := daemonize(o, socks, pid)
		var retrying *daemonRetryingError
		if err != nil && !errors.As(err, &retrying) {
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
		defer pid.release()
	}

	if o.ListenFDs {
		if err := listenFDsCommand(&cfg, socks); err != nil {
			return err
		}
	} else {
		cfg.PortEnv = activation.PortEnv(socks)
		cfg.Files = activation.Files(socks)
	}
	var observers []func(supervisor.Event)
	if daemon {
		observers = append(observers, ready.observer(o.LogFile))
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
		queue := sd.queue()
		// STOPPING=1 and the last status should reach systemd, but a stuck
		// systemd must not keep us from exiting.
		defer func() {
			if err := queue.Close(notifyFlushTimeout); err != nil {
				fmt.Fprintf(os.Stderr, "sd_notify: %v\n", err)
			}
		}()
		observers = append(observers, sd.observer(queue, startWait))
	}
	cfg.Observer = func(e supervisor.Event) {
		for _, o := range observers {
			o(e)
		}
	}
	sup, err := supervisor.New(cfg)
	if err != nil {
		return err
	}
	return sup.Run(signals)
}

// configure turns the options into the supervisor's configuration and the
// socket specs, checking every value so that bad input fails before anything
// is bound or started.
func configure(o *Options) (supervisor.Config, []activation.Spec, error) {
	cfg := supervisor.Config{
		Command:        o.Command,
		Dir:            o.Dir,
		Interval:       o.Interval,
		KillTimeout:    o.KillTimeout,
		MaxBackoff:     o.MaxBackoff,
		StatusFile:     o.StatusFile,
		ReadyByNotify:  o.ReadyNotify,
		ReadyTimeout:   o.ReadyTimeout,
		WorkerWatchdog: o.WorkerWatchdog,
	}
	if cfg.ReadyByNotify && cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = time.Minute
	}
	var err error
	if cfg.SignalOnHUP, err = signalOption("--signal-on-hup", o.SignalOnHUP); err != nil {
		return cfg, nil, err
	}
	if cfg.SignalOnTERM, err = signalOption("--signal-on-term", o.SignalOnTERM); err != nil {
		return cfg, nil, err
	}
	cfg.SignalOnHUPName, cfg.SignalOnTERMName = signalNumber(o.SignalOnHUP), signalNumber(o.SignalOnTERM)
	var specs []activation.Spec
	for _, p := range o.Ports {
		spec, err := activation.ParsePort(p)
		if err != nil {
			return cfg, nil, err
		}
		if spec.Pinned && o.ListenFDs {
			return cfg, nil, fmt.Errorf("--port %s: --listen-fds passes the sockets on descriptors 3 and up, in order; it cannot pin one with =FD", p)
		}
		specs = append(specs, spec)
	}
	for _, p := range o.Paths {
		spec, err := activation.ParsePath(p)
		if err != nil {
			return cfg, nil, err
		}
		specs = append(specs, spec)
	}
	cfg.Env = workerEnv(o)
	if err := checkDurationVars(cfg.Env); err != nil {
		return cfg, nil, err
	}
	return cfg, specs, nil
}

func signalOption(option, name string) (syscall.Signal, error) {
	if name == "" {
		return syscall.SIGTERM, nil
	}
	sig, err := supervisor.ParseSignal(name)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", option, err)
	}
	return sig, nil
}

// signalNumber is a signal option given as a number, which the log lines
// print as given, as 0.35 does; "" for a name.
func signalNumber(given string) string {
	if n := strings.TrimSpace(given); n != "" && strings.Trim(n, "0123456789") == "" {
		return n
	}
	return ""
}

// workerEnv is our environment with the options that 0.35 exports to it.
func workerEnv(o *Options) []string {
	env := os.Environ()
	set := func(k, v string) { env = append(env, k+"="+v) }
	if o.EnvDir != "" {
		set("ENVDIR", o.EnvDir)
	}
	if o.EnableAutoRestart {
		set("ENABLE_AUTO_RESTART", "1")
	}
	if o.KillOldDelay != nil {
		set("KILL_OLD_DELAY", strconv.FormatFloat(*o.KillOldDelay, 'f', -1, 64))
	}
	if o.AutoRestartInterval != nil {
		set("AUTO_RESTART_INTERVAL", strconv.FormatFloat(*o.AutoRestartInterval, 'f', -1, 64))
	}
	// Later entries win when the supervisor reads the list.
	return env
}

// checkWritable fails when the status file could not be written, by creating
// and removing a temporary file as the supervisor writes it through.
func checkWritable(statusFile string) error {
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
