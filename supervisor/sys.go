package supervisor

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// sys is the supervisor's only way to the operating system, so that the loop
// can be driven by a fake in tests.
type sys struct {
	// spawn starts a process and returns its pid; the error is the child's
	// failure to chdir or exec, reported before spawn returns.
	spawn func(path string, argv []string, attr *syscall.ProcAttr) (int, error)
	kill  func(pid int, sig syscall.Signal) error
	// reap collects one exited child without blocking; ok is false when none
	// has exited.
	reap func() (pid int, status syscall.WaitStatus, ok bool)
	// adopt, when set, makes this process the reaper of its descendants'
	// orphans, so that a worker's children outliving it are reaped (and
	// reported) by the supervisor instead of init.
	adopt func() error
	// readDir lists a directory (the envdir).
	readDir func(name string) ([]os.DirEntry, error)
}

var realSys = sys{
	// syscall.ForkExec, not os.StartProcess: the descriptor table is passed as
	// plain numbers, so no socket is turned into an *os.File (whose Fd()
	// would clear O_NONBLOCK for every holder), and no pidfd is opened.
	spawn:   syscall.ForkExec,
	kill:    unix.Kill,
	readDir: os.ReadDir,
	adopt:   func() error { return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
	reap: func() (int, syscall.WaitStatus, bool) {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil || pid <= 0 {
				return 0, 0, false
			}
			return pid, syscall.WaitStatus(ws), true
		}
	},
}
