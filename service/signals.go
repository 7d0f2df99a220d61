package service

import (
	"os"

	"github.com/ss-bridge/ss-bridge/supervisor"
)

// resumeSignals are the signals routed by init in an image that a
// self-upgrade (or its rollback) started, and resumeStop undoes that.
var (
	resumeSignals supervisor.Signals
	resumeStop    func()
)

// init catches the signals of an image started by a self-upgrade as early as
// Go lets a program: the old image ignored HUP for its execve, and Go's
// default action for a TERM is to die, so until signal.Notify a HUP is lost
// and a TERM kills us with the workers. This package's init runs milliseconds
// before main on a loaded machine; the rest of the window, the kernel's
// execve and the runtime's start, no Go code can reach (see the README's
// Self-upgrade section). Only then: any other run of the program, a command
// such as `ss-bridge status` among them, keeps the default actions.
func init() {
	if os.Getenv(resumeFDEnv) != "" {
		resumeSignals, resumeStop = supervisor.NotifySignals()
	}
}

// NotifySignals routes the process's signals to new supervisor.Signals, as
// supervisor.NotifySignals does, or hands over those init routed already.
// stop undoes it.
func NotifySignals() (sigs supervisor.Signals, stop func()) {
	if resumeStop != nil {
		sigs, stop = resumeSignals, resumeStop
		resumeSignals, resumeStop = supervisor.Signals{}, nil
		return sigs, stop
	}
	return supervisor.NotifySignals()
}
