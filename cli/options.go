package cli

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ss-bridge/ss-bridge/supervisor"
)

// Options are start_server's options, plus ss-bridge's own.
type Options struct {
	Ports, Paths []string
	PathMode     os.FileMode
	Dir          string
	Interval     time.Duration
	SignalOnHUP  string
	SignalOnTERM string
	PidFile      string
	StatusFile   string
	EnvDir       string
	LogFile      string
	Backlog      int

	Daemonize         bool
	EnableAutoRestart bool
	// Set only when given: 0.35 exports each given one to the environment,
	// where the envdir may override it.
	AutoRestartInterval *float64
	KillOldDelay        *float64

	KillTimeout time.Duration
	MaxBackoff  time.Duration
	Timeout     time.Duration

	// ReadyNotify is --ready=notify: a worker is started when it says
	// READY=1, not after --interval.
	ReadyNotify    bool
	ReadyTimeout   time.Duration
	WorkerWatchdog time.Duration
	// ListenFDs passes the sockets as systemd does (LISTEN_FDS from fd 3).
	ListenFDs bool
	// Workers is --workers (0: not given, 0.35's single worker); Rolling
	// and MaxSurge (0: not given) choose how a pool restarts.
	Workers  int
	Rolling  bool
	MaxSurge int

	Restart, Stop, Help, Version bool

	// The commands' own options (see commands.go).
	Name           string
	Binary         string
	Socket         bool
	User           bool
	Install        bool
	Enable         bool
	Now            bool
	Force          bool
	SystemdVersion int
	OutputDir      string
	JSON           bool
	Follow         bool

	// Command is the worker's argv: what follows "--", and any non-option
	// words before it (Getopt::Long permutes them, and so do we).
	Command []string
}

type optKind int

const (
	flag optKind = iota
	text
	list
	integer
	seconds
)

type option struct {
	name string
	kind optKind
	set  func(o *Options, v string) error
}

// secondsValue reads a duration option; every one has the same bound (see
// supervisor.ParseSeconds).
func secondsValue(v string) (time.Duration, error) {
	return supervisor.ParseSeconds(v)
}

// floatValue reads a duration option that is exported to the workers'
// environment as the number given.
func floatValue(v string) (*float64, error) {
	if _, err := supervisor.ParseSeconds(v); err != nil {
		return nil, err
	}
	f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
	return &f, nil
}

// positiveValue reads a duration that has no "never": the supervisor takes 0
// for "not given" and uses the default, so --max-backoff=0 or
// --ready-timeout=0, meant as "no backoff" or "no limit", would silently be
// a minute.
func positiveValue(v string) (time.Duration, error) {
	d, err := supervisor.ParseSeconds(v)
	if err == nil && d <= 0 {
		return 0, errors.New("must be more than 0")
	}
	return d, err
}

// watchdogValue reads --worker-watchdog. A positive value below a
// microsecond is refused rather than passed on as WATCHDOG_USEC=0, which
// tells a worker that it has no watchdog.
func watchdogValue(v string) (time.Duration, error) {
	d, err := supervisor.ParseSeconds(v)
	if err == nil && d > 0 && d < time.Microsecond {
		return 0, errors.New("below 1 microsecond, the unit of WATCHDOG_USEC")
	}
	return d, err
}

// countValue reads --workers or --max-surge.
func countValue(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 1 || n > supervisor.MaxWorkers {
		return 0, fmt.Errorf("a whole number from 1 to %d expected", supervisor.MaxWorkers)
	}
	return n, nil
}

// checkDurationVars fails when the KILL_OLD_DELAY or AUTO_RESTART_INTERVAL
// that the workers' environment env ends up with (an option's, or one we
// inherited) is not a valid duration: bad input is an error at start-up, not
// a surprise at the first restart.
func checkDurationVars(env []string) error {
	last := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			last[k] = v
		}
	}
	for _, name := range []string{"KILL_OLD_DELAY", "AUTO_RESTART_INTERVAL"} {
		if v, ok := last[name]; ok {
			if _, err := supervisor.ParseSeconds(v); err != nil {
				return fmt.Errorf("%s=%s: %w", name, v, err)
			}
		}
	}
	return nil
}

var options = []option{
	{"port", list, func(o *Options, v string) error { o.Ports = append(o.Ports, v); return nil }},
	{"path", list, func(o *Options, v string) error { o.Paths = append(o.Paths, v); return nil }},
	{"path-mode", text, func(o *Options, v string) error {
		m, err := strconv.ParseUint(v, 8, 32)
		if err != nil || m > 0o777 || m == 0 {
			return fmt.Errorf("an octal mode from 1 to 0777 expected")
		}
		o.PathMode = os.FileMode(m)
		return nil
	}},
	{"dir", text, func(o *Options, v string) error { o.Dir = v; return nil }},
	{"interval", seconds, func(o *Options, v string) (err error) { o.Interval, err = secondsValue(v); return }},
	{"signal-on-hup", text, func(o *Options, v string) error { o.SignalOnHUP = v; return nil }},
	{"signal-on-term", text, func(o *Options, v string) error { o.SignalOnTERM = v; return nil }},
	{"pid-file", text, func(o *Options, v string) error { o.PidFile = v; return nil }},
	{"status-file", text, func(o *Options, v string) error { o.StatusFile = v; return nil }},
	{"envdir", text, func(o *Options, v string) error { o.EnvDir = v; return nil }},
	{"log-file", text, func(o *Options, v string) error { o.LogFile = v; return nil }},
	{"backlog", integer, func(o *Options, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 {
			return fmt.Errorf("a positive whole number expected")
		}
		o.Backlog = n
		return nil
	}},
	{"daemonize", flag, func(o *Options, _ string) error { o.Daemonize = true; return nil }},
	{"enable-auto-restart", flag, func(o *Options, _ string) error { o.EnableAutoRestart = true; return nil }},
	{"auto-restart-interval", seconds, func(o *Options, v string) (err error) { o.AutoRestartInterval, err = floatValue(v); return }},
	{"kill-old-delay", seconds, func(o *Options, v string) (err error) { o.KillOldDelay, err = floatValue(v); return }},
	{"kill-timeout", seconds, func(o *Options, v string) (err error) { o.KillTimeout, err = secondsValue(v); return }},
	{"max-backoff", seconds, func(o *Options, v string) (err error) { o.MaxBackoff, err = positiveValue(v); return }},
	{"timeout", seconds, func(o *Options, v string) (err error) { o.Timeout, err = secondsValue(v); return }},
	{"ready", text, func(o *Options, v string) error {
		switch strings.ToLower(v) {
		case "interval":
			o.ReadyNotify = false
		case "notify":
			o.ReadyNotify = true
		default:
			return fmt.Errorf("\"interval\" or \"notify\" expected")
		}
		return nil
	}},
	{"ready-timeout", seconds, func(o *Options, v string) (err error) { o.ReadyTimeout, err = positiveValue(v); return }},
	{"worker-watchdog", seconds, func(o *Options, v string) (err error) { o.WorkerWatchdog, err = watchdogValue(v); return }},
	{"listen-fds", flag, func(o *Options, _ string) error { o.ListenFDs = true; return nil }},
	{"workers", integer, func(o *Options, v string) (err error) { o.Workers, err = countValue(v); return }},
	{"rolling", flag, func(o *Options, _ string) error { o.Rolling = true; return nil }},
	{"max-surge", integer, func(o *Options, v string) (err error) { o.MaxSurge, err = countValue(v); return }},
	{"restart", flag, func(o *Options, _ string) error { o.Restart = true; return nil }},
	{"stop", flag, func(o *Options, _ string) error { o.Stop = true; return nil }},
	{"help", flag, func(o *Options, _ string) error { o.Help = true; return nil }},
	{"version", flag, func(o *Options, _ string) error { o.Version = true; return nil }},
}

// lookup finds an option as Getopt::Long does: case-insensitively, by its
// full name or by a prefix that names only one option.
func lookup(table []option, name string) (*option, error) {
	name = strings.ToLower(name)
	var matches []*option
	for i := range table {
		if table[i].name == name {
			return &table[i], nil
		}
		if strings.HasPrefix(table[i].name, name) {
			matches = append(matches, &table[i])
		}
	}
	switch len(matches) {
	case 0:
		return nil, fmt.Errorf("unknown option: %s", name)
	case 1:
		return matches[0], nil
	}
	names := make([]string, len(matches))
	for i, m := range matches {
		names[i] = m.name
	}
	sort.Strings(names)
	return nil, fmt.Errorf("option %s is ambiguous (%s)", name, strings.Join(names, ", "))
}

// Parse reads start_server's command line (without the program name).
func Parse(args []string) (*Options, error) {
	return parseWith(options, args)
}

// tableParsed, when set, is given every option table parseWith reads: the
// commands build their tables as they run, and the test that help and the
// man page document every option finds them this way.
var tableParsed func(table []option)

// parseWith reads a command line with the options of table.
func parseWith(table []option, args []string) (*Options, error) {
	if tableParsed != nil {
		tableParsed(table)
	}
	o := &Options{Interval: time.Second}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if arg == "--" {
			o.Command = append(o.Command, args[i+1:]...)
			break
		}
		if len(arg) < 2 || arg[0] != '-' {
			o.Command = append(o.Command, arg)
			continue
		}
		name := strings.TrimPrefix(strings.TrimPrefix(arg, "-"), "-")
		name, value, hasValue := strings.Cut(name, "=")
		opt, err := lookup(table, name)
		if err != nil {
			return nil, err
		}
		if opt.kind == flag {
			if hasValue {
				return nil, fmt.Errorf("option --%s does not take an argument", opt.name)
			}
		} else if !hasValue {
			if i+1 >= len(args) {
				return nil, fmt.Errorf("option --%s requires an argument", opt.name)
			}
			i++
			value = args[i]
		}
		if err := opt.set(o, value); err != nil {
			return nil, fmt.Errorf("--%s=%s: %w", opt.name, value, err)
		}
	}
	return o, nil
}
