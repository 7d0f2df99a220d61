package supervisor

import (
	"fmt"
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
