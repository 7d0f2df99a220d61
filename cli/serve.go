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
	// TERM. SIGPIPE is caught (not ignored) so that workers still get its
	// default action; it and ALRM are not acted on, so a full channel may
	// drop them.
	signals, stopSignals := supervisor.NotifySignals()
	defer stopSignals()
	ignored := make(chan os.Signal, 1)
	signal.Notify(ignored, syscall.SIGPIPE, syscall.SIGALRM)
	defer signal.Stop(ignored)
	// The bridge's live heap is near zero; the default GOGC lets each
	// restart's garbage double RSS (4 to 9 MB over 1,000 restarts) before a
	// collection. Collecting sooner costs nothing measurable.
	debug.SetGCPercent(20)

	daemon := os.Getenv(daemonStageEnv) == "2"
	os.Unsetenv(daemonStageEnv)
	// Descriptors our parent leaked to us are not the workers' to inherit.
	closeOnExecAbove(2)
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

	var log *logSink
	if o.LogFile != "" && !daemon {
		if log, err = openLog(o.LogFile); err != nil {
			return err
		}
		defer log.finish()
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
	}
	if o.Daemonize && !daemon {
		err := daemonize(o, socks, pid)
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
		observers = append(observers, daemonReadyObserver())
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
// and removing the temporary file the supervisor writes it through.
func checkWritable(statusFile string) error {
	tmp := statusFile + "." + strconv.Itoa(os.Getpid())
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("status file %s is not writable: %w", statusFile, unwrap(err))
	}
	f.Close()
	return os.Remove(tmp)
}

func unwrap(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// logSink is where --log-file sends our and the workers' output: a file
// opened for appending, or the stdin of a command run by /bin/sh.
type logSink struct {
	fd  int
	pid int // the command's, for a pipe
}

func openLog(spec string) (*logSink, error) {
	if cmd, ok := strings.CutPrefix(strings.TrimLeft(spec, " \t\n"), "|"); ok {
		cmd = strings.TrimSpace(cmd)
		if cmd == "" {
			return nil, fmt.Errorf("--log-file %q: no command after '|'", spec)
		}
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			return nil, fmt.Errorf("failed to open pipe:%s: %w", spec, err)
		}
		pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", cmd}, &syscall.ProcAttr{
			Env:   os.Environ(),
			Files: []uintptr{uintptr(p[0]), 1, 2},
		})
		unix.Close(p[0])
		if err != nil {
			unix.Close(p[1])
			return nil, fmt.Errorf("failed to open pipe:%s: %w", spec, err)
		}
		return &logSink{fd: p[1], pid: pid}, nil
	}
	fd, err := unix.Open(spec, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("failed to open log file %s: %w", spec, err)
	}
	return &logSink{fd: fd}, nil
}

// redirect points our stdout and stderr, and so the workers', at the log.
func (l *logSink) redirect() error {
	for _, fd := range []int{1, 2} {
		if err := unix.Dup3(l.fd, fd, 0); err != nil {
			return fmt.Errorf("redirect output to the log: %w", err)
		}
	}
	return nil
}

// finish closes our ends of the log and, for a pipe, waits a little for the
// command to write out what it has, so that no output is lost on exit.
func (l *logSink) finish() {
	if l.pid == 0 {
		unix.Close(l.fd)
		return
	}
	if null, err := unix.Open(os.DevNull, unix.O_WRONLY|unix.O_CLOEXEC, 0); err == nil {
		unix.Dup3(null, 1, 0)
		unix.Dup3(null, 2, 0)
		unix.Close(null)
	}
	unix.Close(l.fd)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(l.pid, &ws, unix.WNOHANG, nil)
		if pid == l.pid || err != nil { // ECHILD: already reaped by the supervisor
			return
		}
	}
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
