package service

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// runtimeThreadSlack is the timer slack, in nanoseconds, given to the Go
// runtime's threads other than the main one. The runtime's monitor thread
// (sysmon) sleeps 20 us at a time while any P is busy or in a system call,
// which with the kernel's default slack of 50 us makes a wakeup every 70 us
// through each fork of a worker (the vfork holds the P until the child has
// exec'd: milliseconds on a busy machine), and nothing can make it sleep
// longer. With 1 ms of slack the kernel coalesces those sleeps: ss-bench's
// superdaemon cost with one worker went from 87-102 to 57-62 context switches
// per second (Perl 0.35: 29-42), at the price of timers on those threads
// firing up to 1 ms late, which nothing in a superdaemon notices.
const runtimeThreadSlack = 1000000

// mainSlack is the main thread's timer slack, as we were started with, read
// by slackenRuntimeThreads; 0 before. The main thread keeps it, and so do the
// workers forked from it (a fork and an exec keep the forking thread's slack).
var mainSlack int

// slackenRuntimeThreads gives every thread but the main one
// runtimeThreadSlack. Setting another thread's slack takes CAP_SYS_NICE
// (root has it); without it nothing changes.
func slackenRuntimeThreads() {
	// /proc/self is the thread group's leader: the main thread.
	if data, err := os.ReadFile("/proc/self/timerslack_ns"); err == nil {
		mainSlack, _ = strconv.Atoi(strings.TrimSpace(string(data)))
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return
	}
	main := strconv.Itoa(os.Getpid())
	for _, t := range tasks {
		if t.Name() == main {
			continue
		}
		// /proc/TID, not /proc/self/task/TID, has the file.
		f, err := os.OpenFile("/proc/"+t.Name()+"/timerslack_ns", os.O_WRONLY, 0)
		if err != nil {
			continue
		}
		f.WriteString(strconv.Itoa(runtimeThreadSlack))
		f.Close()
	}
}

// restoreThreadSlack gives the calling thread, about to fork a process that
// is not a worker (the log command), the main thread's slack, which the
// process would otherwise inherit from a slackened thread.
func restoreThreadSlack() {
	if mainSlack > 0 {
		unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(mainSlack), 0, 0, 0)
	}
}
