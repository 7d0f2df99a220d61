package supervisor

import (
	"errors"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// init locks the main goroutine to the main thread (the Go runtime runs
// main on the thread that ran the init functions). Every worker is forked
// with a Pdeathsig, which Linux sends when the forking thread exits; an
// execve of this process ends every thread but the execing one. Forking on,
// and execing from, the one thread that lives as long as the process keeps
// the workers alive across a self-upgrade, and still signals them when the
// process dies. It is here, in the package that forks, rather than in a
// main package, so that every program running a supervisor (ss-bridge, the
// tests' probes) gets it and none can forget it.
func init() { runtime.LockOSThread() }

// onMainThread reports whether the calling goroutine runs on the main thread.
func onMainThread() bool { return unix.Gettid() == unix.Getpid() }

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
	// onMainThread, when set, reports whether spawn is called on the main
	// thread, where a worker's Pdeathsig survives an execve of this process.
	onMainThread func() bool
}

var realSys = sys{
	// syscall.ForkExec, not os.StartProcess: the descriptor table is passed as
	// plain numbers, so no socket is turned into an *os.File (whose Fd()
	// would clear O_NONBLOCK for every holder), and no pidfd is opened.
	spawn:        syscall.ForkExec,
	kill:         unix.Kill,
	readDir:      os.ReadDir,
	onMainThread: onMainThread,
	adopt:        func() error { return unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
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
