package supervisor

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ParseSignal reads a signal as start_server does: a name with or without the
// "SIG" prefix, in any case ("term", "SIGUSR1", "Hup"), or a number ("9"),
// which Perl's kill accepts too.
func ParseSignal(name string) (syscall.Signal, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if num, err := strconv.Atoi(n); err == nil {
		// 0 is no signal, only a test of the pid; Linux has 64.
		if num < 1 || num > 64 {
			return 0, fmt.Errorf("signal number %s out of range 1-64", n)
		}
		return syscall.Signal(num), nil
	}
	n = strings.TrimPrefix(n, "SIG")
	if sig := unix.SignalNum("SIG" + n); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal name %q", name)
}

// signalName is the name 0.35 prints for a signal: "TERM", "USR1"; the number
// for a signal without a name (the real-time ones).
func signalName(sig syscall.Signal) string {
	if name := unix.SignalName(sig); name != "" {
		return strings.TrimPrefix(name, "SIG")
	}
	return strconv.Itoa(int(sig))
}

// logName is how the log lines name sig: as given, if it was given a name.
func logName(sig syscall.Signal, given string) string {
	if given != "" {
		return given
	}
	return signalName(sig)
}

// Signals are the channels Run takes the process's signals from, one per
// kind: os/signal drops a signal whose channel is full, so one shared
// channel flooded with HUPs or CHLDs could lose a TERM.
type Signals struct {
	// Stop carries SIGTERM, SIGINT and SIGQUIT. Only the first one counts, so a
	// signal dropped from a full channel changes nothing.
	Stop <-chan os.Signal
	// Reload carries SIGHUP. HUPs arriving while one is pending make one
	// restart, so a buffer of one loses nothing.
	Reload <-chan os.Signal
	// Child carries SIGCHLD. Each one makes Run reap every exited child, so
	// a buffer of one loses nothing either.
	Child <-chan os.Signal
	// Scale carries SIGTTIN (one worker more) and SIGTTOU (one fewer) for a
	// pool (Config.Workers); nil, as NotifySignals leaves it, for none.
	Scale <-chan os.Signal
	// Upgrade carries SIGUSR2, which asks for a self-upgrade; Run does not
	// read it, the owner of the supervisor does. Requests arriving during
	// one are one request, so a buffer of one loses nothing.
	Upgrade <-chan os.Signal

	// reload is Reload, for IgnoreReload to route SIGHUP to it again.
	reload chan os.Signal
}

// IgnoreReload sets SIGHUP's disposition to ignored, for the instant of an
// execve of this process: a HUP pending across it would otherwise kill the
// new image before its runtime can catch it (exec resets a caught signal to
// its default action, and ignored stays ignored). rearm routes SIGHUP to
// Reload again, for when the exec failed.
func (s Signals) IgnoreReload() (rearm func()) {
	signal.Ignore(syscall.SIGHUP)
	return func() {
		if s.reload != nil {
			signal.Notify(s.reload, syscall.SIGHUP)
		}
	}
}

// NotifySignals routes the process's TERM, INT, QUIT, HUP, CHLD and USR2 to new
// Signals (signal.Notify), buffered so that none that matters is lost.
// stop undoes it.
func NotifySignals() (sigs Signals, stop func()) {
	stopCh := make(chan os.Signal, 2)
	reload := make(chan os.Signal, 1)
	child := make(chan os.Signal, 1)
	upgrade := make(chan os.Signal, 1)
	signal.Notify(stopCh, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT)
	signal.Notify(reload, syscall.SIGHUP)
	signal.Notify(child, syscall.SIGCHLD)
	signal.Notify(upgrade, syscall.SIGUSR2)
	return Signals{Stop: stopCh, Reload: reload, Child: child, Upgrade: upgrade, reload: reload}, func() {
		signal.Stop(stopCh)
		signal.Stop(reload)
		signal.Stop(child)
		signal.Stop(upgrade)
	}
}

// NotifyScale routes the process's TTIN and TTOU to sigs.Scale, for a pool
// (Config.Workers); stop undoes it. Only a pool catches them: a caught
// signal reaches the workers with its default action after their exec,
// whereas the single worker of 0.35 inherits an ignored TTIN or TTOU as
// ignored. Each signal counts, so the buffer holds a burst of them.
func NotifyScale(sigs *Signals) (stop func()) {
	scale := make(chan os.Signal, 64)
	signal.Notify(scale, syscall.SIGTTIN, syscall.SIGTTOU)
	sigs.Scale = scale
	return func() { signal.Stop(scale) }
}
