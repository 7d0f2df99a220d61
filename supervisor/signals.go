package supervisor

import (
	"fmt"
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
