package supervisor

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ParseSignal reads a signal name as start_server does: with or without the
// "SIG" prefix, in any case ("term", "SIGUSR1", "Hup").
func ParseSignal(name string) (syscall.Signal, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	n = strings.TrimPrefix(n, "SIG")
	if sig := unix.SignalNum("SIG" + n); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal name %q", name)
}

// signalName is the name 0.35 prints for a signal: "TERM", "USR1".
func signalName(sig syscall.Signal) string {
	return strings.TrimPrefix(unix.SignalName(sig), "SIG")
}

// Signals are the channels Run takes the process's signals from, one per
// kind: os/signal drops a signal whose channel is full, so one shared
// channel flooded with HUPs or CHLDs could lose a TERM.
type Signals struct {
	// Stop carries SIGTERM and SIGINT. Only the first one counts, so a
	// signal dropped from a full channel changes nothing.
	Stop <-chan os.Signal
	// Reload carries SIGHUP. HUPs arriving while one is pending make one
	// restart, so a buffer of one loses nothing.
	Reload <-chan os.Signal
	// Child carries SIGCHLD. Each one makes Run reap every exited child, so
	// a buffer of one loses nothing either.
	Child <-chan os.Signal
}

// NotifySignals routes the process's TERM, INT, HUP and CHLD to new
// Signals (signal.Notify), buffered so that none that matters is lost.
// stop undoes it.
func NotifySignals() (sigs Signals, stop func()) {
	stopCh := make(chan os.Signal, 2)
	reload := make(chan os.Signal, 1)
	child := make(chan os.Signal, 1)
	signal.Notify(stopCh, syscall.SIGTERM, syscall.SIGINT)
	signal.Notify(reload, syscall.SIGHUP)
	signal.Notify(child, syscall.SIGCHLD)
	return Signals{Stop: stopCh, Reload: reload, Child: child}, func() {
		signal.Stop(stopCh)
		signal.Stop(reload)
		signal.Stop(child)
	}
}
