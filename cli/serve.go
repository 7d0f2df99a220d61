package cli

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/activation"
	"github.com/ss-bridge/ss-bridge/service"
	"github.com/ss-bridge/ss-bridge/supervisor"
)

// serve runs the superdaemon until TERM or INT.
func serve(o *Options) error {
	// Signals are caught before anything is set up, so that a HUP or TERM
	// arriving during start-up is acted on rather than killing us. Each kind
	// has a channel of its own, so that a flood of one cannot crowd out a
	// TERM. QUIT stops the server as TERM does: Go's default action (a stack
	// dump and exit) would leave the pid, status and socket files behind.
	signals, stopSignals := service.NotifySignals()
	defer stopSignals()
	if o.Daemonize && o.LogFile == "" {
		return errors.New("--log-file option must be specified together with --daemonize")
	}
	if len(o.Command) == 0 {
		return errors.New("server program not specified")
	}
	c, err := configure(o)
	if err != nil {
		return err
	}
	if o.Workers > 0 {
		defer supervisor.NotifyScale(&signals)()
	}
	return service.Run(c, signals)
}

// preflight answers, as the candidate of a self-upgrade, whether this
// ss-bridge can resume the server the options describe from the state on
// stdin (see service.Preflight).
func preflight(o *Options) int {
	c, err := configure(o)
	if err == nil && len(o.Command) == 0 {
		err = errors.New("server program not specified")
	}
	if err != nil {
		fmt.Printf("error: %v\n", err)
		return 1
	}
	return service.Preflight(c, os.Stdin, os.Stdout)
}

// configure turns the options into the server's configuration, checking
// every value so that bad input fails before anything is bound or started.
func configure(o *Options) (service.Config, error) {
	c := service.Config{
		Supervisor: supervisor.Config{
			Command:        o.Command,
			Dir:            o.Dir,
			Interval:       o.Interval,
			KillTimeout:    o.KillTimeout,
			MaxBackoff:     o.MaxBackoff,
			StatusFile:     o.StatusFile,
			ReadyByNotify:  o.ReadyNotify,
			ReadyTimeout:   o.ReadyTimeout,
			WorkerWatchdog: o.WorkerWatchdog,
			Workers:        o.Workers,
			Rolling:        o.Rolling,
			MaxSurge:       o.MaxSurge,
		},
		Env:       optionEnv(o),
		Backlog:   o.Backlog,
		PathMode:  o.PathMode,
		PidFile:   o.PidFile,
		LogFile:   o.LogFile,
		Daemonize: o.Daemonize,
		ListenFDs: o.ListenFDs,
		Version:   Version(),
	}
	cfg := &c.Supervisor
	if o.Workers == 0 && (o.Rolling || o.MaxSurge != 0) {
		return c, errors.New("--rolling and --max-surge replace the workers of a pool: give --workers too")
	}
	if cfg.ReadyByNotify && cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = time.Minute
	}
	var err error
	if cfg.SignalOnHUP, err = signalOption("--signal-on-hup", o.SignalOnHUP); err != nil {
		return c, err
	}
	if cfg.SignalOnTERM, err = signalOption("--signal-on-term", o.SignalOnTERM); err != nil {
		return c, err
	}
	cfg.SignalOnHUPName, cfg.SignalOnTERMName = signalNumber(o.SignalOnHUP), signalNumber(o.SignalOnTERM)
	for _, p := range o.Ports {
		spec, err := activation.ParsePort(p)
		if err != nil {
			return c, err
		}
		if spec.Pinned && o.ListenFDs {
			return c, fmt.Errorf("--port %s: --listen-fds passes the sockets on descriptors 3 and up, in order; it cannot pin one with =FD", p)
		}
		c.Specs = append(c.Specs, spec)
	}
	for _, p := range o.Paths {
		spec, err := activation.ParsePath(p)
		if err != nil {
			return c, err
		}
		c.Specs = append(c.Specs, spec)
	}
	// As the workers' environment will have them, our own included.
	if err := checkDurationVars(append(os.Environ(), c.Env...)); err != nil {
		return c, err
	}
	return c, nil
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

// optionEnv is what the options that 0.35 exports to the workers add to
// their environment.
func optionEnv(o *Options) []string {
	var env []string
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
	return env
}
