package service

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// logSink is where --log-file sends our and the workers' output: a file
// opened for appending, or the stdin of a command run by /bin/sh.
//
// For a command, we keep the read end of its pipe, so that nobody writing to
// the pipe ever gets EPIPE (a Go worker dies of it, whatever SIGPIPE's
// disposition). When the command exits, we copy what arrives on the pipe to
// the stderr we started with, say so there, and start the command again with
// backoff on the same pipe: workers keep their descriptors and lose nothing.
type logSink struct {
	fd       int      // the file, or the pipe's write end: our stdout and stderr
	fallback *os.File // the stderr we started with
	// redirected is set once our stdout and stderr go to the log.
	redirected bool

	// For a command:
	command string
	readEnd int // the pipe's read end, each command's stdin

	mu       sync.Mutex
	pid      int
	pidfd    *os.File // readable once the command has exited
	started  time.Time
	backoff  time.Duration
	draining *drain
	closing  bool
	own      *lossyWriter // see ownWriter
}

// Backoff between restarts of a log command that keeps exiting; it is reset
// once a command has run for logRestartReset.
const (
	logRestartMin   = 100 * time.Millisecond
	logRestartMax   = 30 * time.Second
	logRestartReset = 10 * time.Second
)

func openLog(spec string) (*logSink, error) {
	stderr, err := unix.FcntlInt(2, unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return nil, fmt.Errorf("--log-file: dup stderr: %w", err)
	}
	fallback := os.NewFile(uintptr(stderr), "stderr")
	if cmd, ok := strings.CutPrefix(strings.TrimLeft(spec, " \t\n"), "|"); ok {
		cmd = strings.TrimSpace(cmd)
		if cmd == "" {
			fallback.Close()
			return nil, fmt.Errorf("--log-file %q: no command after '|'", spec)
		}
		var p [2]int
		if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
			fallback.Close()
			return nil, fmt.Errorf("failed to open pipe:%s: %w", spec, err)
		}
		// Best effort: with the default 64 KiB, the log of a command that
		// is down overflows sooner.
		unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, logPipeSize)
		l := &logSink{fd: p[1], command: cmd, readEnd: p[0], fallback: fallback, backoff: logRestartMin}
		if err := l.start(); err != nil {
			unix.Close(l.fd)
			unix.Close(l.readEnd)
			fallback.Close()
			return nil, fmt.Errorf("failed to open pipe:%s: %w", spec, err)
		}
		return l, nil
	}
	fd, err := openLogFile(spec)
	if err != nil {
		fallback.Close()
		return nil, err
	}
	return &logSink{fd: fd, fallback: fallback}, nil
}

// start runs the command on the pipe. Called with mu held, or before watch.
func (l *logSink) start() error {
	// The child gets the forking thread's signal mask. Threads that the
	// runtime started after a self-upgrade have USR2 and ALRM blocked, as the
	// exec left them; the command must not inherit that.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	unblockUpgradeSignals()
	restoreThreadSlack()
	pidfd := -1
	pid, err := syscall.ForkExec("/bin/sh", []string{"sh", "-c", l.command}, &syscall.ProcAttr{
		Env:   os.Environ(),
		Files: []uintptr{uintptr(l.readEnd), l.fallback.Fd(), l.fallback.Fd()},
		Sys:   &syscall.SysProcAttr{PidFD: &pidfd},
	})
	if err != nil {
		return err
	}
	l.pid, l.pidfd, l.started = pid, nil, time.Now()
	if pidfd >= 0 { // else a kernel older than 5.3: the command is not watched
		unix.SetNonblock(pidfd, true) // for the runtime's poller
		l.pidfd = os.NewFile(uintptr(pidfd), "pidfd")
	}
	return nil
}

// watch restarts the command whenever it exits, until finish.
func (l *logSink) watch() {
	if l.command == "" {
		return
	}
	go func() {
		l.mu.Lock()
		pid, pidfd := l.pid, l.pidfd
		if pid == 0 && l.draining == nil {
			// Adopted from an earlier image without a running command.
			l.draining = holdLog(l.readEnd, l.fallback)
		}
		l.mu.Unlock()
		for {
			if pid != 0 {
				if pidfd == nil || !waitReadable(pidfd) {
					return // not watched (no pidfd), or finish closed it
				}
				l.mu.Lock()
				if l.closing {
					l.mu.Unlock()
					return
				}
				pidfd.Close()
				// Gone: a self-upgrade during the backoff must not take the
				// dead pid for a running command (see adoptLog).
				l.pid, l.pidfd = 0, nil
				if time.Since(l.started) >= logRestartReset {
					l.backoff = logRestartMin
				}
				l.draining = holdLog(l.readEnd, l.fallback)
				l.mu.Unlock()
				fmt.Fprintf(l.fallback, "ss-bridge: log command %q (pid %d) exited; keeping the log for it until it is restarted\n", l.command, pid)
			}
			var delay time.Duration
			var err error
			l.mu.Lock()
			for {
				delay = l.backoff
				l.backoff = min(2*l.backoff, logRestartMax)
				l.mu.Unlock()
				time.Sleep(delay)
				l.mu.Lock()
				if l.closing {
					l.mu.Unlock()
					return
				}
				// Stopped before the start: the new command reads what was
				// kept, in order.
				l.draining.stop()
				l.draining = nil
				if err = l.start(); err == nil {
					break
				}
				l.draining = holdLog(l.readEnd, l.fallback)
				l.mu.Unlock()
				fmt.Fprintf(l.fallback, "ss-bridge: restart log command %q: %v\n", l.command, err)
				l.mu.Lock()
			}
			pid, pidfd = l.pid, l.pidfd
			l.mu.Unlock()
			fmt.Fprintf(l.fallback, "ss-bridge: log command %q restarted after %s (pid %d)\n", l.command, delay, pid)
		}
	}()
}

// waitReadable waits until f is readable; false if it was closed.
func waitReadable(f *os.File) bool {
	rc, err := f.SyscallConn()
	if err != nil {
		return false
	}
	err = rc.Read(func(fd uintptr) bool {
		p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, _ := unix.Poll(p, 0)
		return n > 0
	})
	return err == nil
}

// logPipeSize is the capacity asked for the log command's pipe: what the
// workers can write while the command is down before any of it is diverted
// (1 MiB is Linux's default pipe-max-size, so no privilege is needed).
const logPipeSize = 1 << 20

// holdCheck is how often a held log's pipe is looked at while no command
// runs; holdFull is the share of the pipe that may fill before the log is
// diverted, leaving the workers room to write for a while after that.
const (
	holdCheck = 25 * time.Millisecond
	holdFull  = 0.75
)

// drain is what reads the log pipe while no command does. It first reads
// nothing: the pipe keeps the log, in order, for the command's restart. Only
// once the pipe is holdFull does it copy what arrives to stderr (the one we
// started with), through a description of its own, non-blocking so that it
// can be stopped, so that the workers never block on a full pipe.
type drain struct {
	stopped chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	f       *os.File // the copy's description, once copying
}

func holdLog(readEnd int, to io.Writer) *drain {
	d := &drain{stopped: make(chan struct{}), done: make(chan struct{})}
	capacity, err := unix.FcntlInt(uintptr(readEnd), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		capacity = 64 << 10
	}
	go func() {
		defer close(d.done)
		tick := time.NewTicker(holdCheck)
		defer tick.Stop()
		for {
			held, err := unix.IoctlGetInt(readEnd, unix.TIOCINQ) // FIONREAD
			if err != nil || float64(held) >= holdFull*float64(capacity) {
				break
			}
			select {
			case <-d.stopped:
				return
			case <-tick.C:
			}
		}
		f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", readEnd), os.O_RDONLY|unix.O_NONBLOCK, 0)
		if err != nil {
			return
		}
		d.mu.Lock()
		select {
		case <-d.stopped:
			d.mu.Unlock()
			f.Close()
			return
		default:
		}
		d.f = f
		d.mu.Unlock()
		fmt.Fprintf(to, "ss-bridge: the log command is still down and its pipe is full; writing the log here until it is restarted\n")
		io.Copy(ignoreErrors{to}, f)
	}()
	return d
}

func (d *drain) stop() {
	if d == nil {
		return
	}
	d.mu.Lock()
	close(d.stopped)
	if d.f != nil {
		d.f.SetReadDeadline(time.Now())
	}
	d.mu.Unlock()
	<-d.done
	if d.f != nil {
		d.f.Close()
	}
}

// flushHeld writes what the pipe still holds to w, when we exit with the
// command down: nobody else will read it.
func flushHeld(readEnd int, w io.Writer) {
	buf := make([]byte, 64<<10)
	f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", readEnd), os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	defer f.Close()
	fd := int(f.Fd()) // raw reads: EAGAIN means empty, not a wait
	for {
		n, err := unix.Read(fd, buf)
		if n > 0 {
			w.Write(buf[:n])
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			return
		}
	}
}

// ignoreErrors is a writer that never fails, so that the drain goes on (and
// writers to the pipe never block) when our stderr is gone.
type ignoreErrors struct{ w io.Writer }

func (w ignoreErrors) Write(p []byte) (int, error) {
	w.w.Write(p)
	return len(p), nil
}

// redirect points our stdout and stderr, and so the workers', at the log.
func (l *logSink) redirect() error {
	for _, fd := range []int{1, 2} {
		if err := unix.Dup3(l.fd, fd, 0); err != nil {
			return fmt.Errorf("redirect output to the log: %w", err)
		}
	}
	l.redirected = true
	return nil
}

// finish closes our ends of the log and, for a pipe, waits a little for the
// command to write out what it has, so that no output is lost on exit. With
// failed, our stderr is the one we started with again, so that the one line
// saying why we failed reaches it too.
func (l *logSink) finish(failed bool) {
	defer func() {
		if failed {
			unix.Dup3(int(l.fallback.Fd()), 2, 0)
		}
		l.fallback.Close()
	}()
	if l.command == "" {
		unix.Close(l.fd)
		return
	}
	l.mu.Lock()
	l.closing = true
	pidfd, pid, d := l.pidfd, l.pid, l.draining
	l.draining = nil
	l.mu.Unlock()
	if null, err := unix.Open(os.DevNull, unix.O_WRONLY|unix.O_CLOEXEC, 0); err == nil {
		unix.Dup3(null, 1, 0)
		unix.Dup3(null, 2, 0)
		unix.Close(null)
	}
	if l.own != nil {
		l.own.close()
	}
	unix.Close(l.fd)
	d.stop()
	if pid == 0 {
		flushHeld(l.readEnd, l.fallback)
	}
	if pidfd != nil {
		// A command that reads to the end exits once the last writer has
		// gone; one that does not read is told to go, and then killed,
		// rather than left behind.
		if !waitExit(pid, logExitGrace) {
			unix.Kill(pid, unix.SIGTERM)
			if !waitExit(pid, time.Second) {
				unix.Kill(pid, unix.SIGKILL)
				waitExit(pid, time.Second)
			}
		}
		pidfd.Close()
	}
	unix.Close(l.readEnd)
}

// logExitGrace is how long the log command may take, when we exit, to write
// out what it has read.
const logExitGrace = 5 * time.Second

// waitExit reaps pid, waiting up to d for it to exit.
func waitExit(pid int, d time.Duration) bool {
	for deadline := time.Now().Add(d); ; time.Sleep(10 * time.Millisecond) {
		var ws unix.WaitStatus
		p, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if p == pid || err != nil { // ECHILD: already reaped by the supervisor
			return true
		}
		if !time.Now().Before(deadline) {
			return false
		}
	}
}

// openLogFile opens the log file for appending. A symlink there is followed
// only when it is owned by us or by the directory's owner: one planted by
// another user (in a world-writable directory such as /tmp) would otherwise
// make us append to a file of their choice, one of root's.
func openLogFile(path string) (int, error) {
	const flags = unix.O_WRONLY | unix.O_APPEND | unix.O_CREAT | unix.O_CLOEXEC | unix.O_NONBLOCK
	fd, err := unix.Open(path, flags|unix.O_NOFOLLOW, 0o644)
	if err == unix.ELOOP {
		if err := trustedSymlink(path); err != nil {
			return -1, err
		}
		fd, err = unix.Open(path, flags, 0o644)
	}
	if err != nil {
		return -1, fmt.Errorf("failed to open log file %s: %w", path, err)
	}
	// O_NONBLOCK only so that opening a FIFO cannot hang; writes block.
	if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil {
		unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
	}
	return fd, nil
}

// trustedSymlink fails unless the symlink at path is owned by us or by the
// owner of its directory (the rule of Linux's fs.protected_symlinks for
// sticky world-writable directories, applied everywhere). Nobody else can
// replace such a link in a sticky directory.
func trustedSymlink(path string) error {
	var link, dir unix.Stat_t
	if err := unix.Lstat(path, &link); err != nil {
		return fmt.Errorf("failed to open log file %s: %w", path, err)
	}
	if err := unix.Stat(filepath.Dir(path), &dir); err != nil {
		return fmt.Errorf("failed to open log file %s: %w", path, err)
	}
	if link.Uid != uint32(os.Geteuid()) && link.Uid != dir.Uid {
		return fmt.Errorf("log file %s is a symlink owned by uid %d, neither us nor the owner of its directory; refusing to follow it", path, link.Uid)
	}
	return nil
}

// ownLogMax bounds what the bridge keeps of its own lines while the log
// command does not read; beyond it they are counted, not kept.
const ownLogMax = 64 << 10

// ownWriter is where the bridge writes its own log lines. For a file it is
// our stderr. For a command it never waits: a command that stops reading
// lets the workers fill the pipe, and a blocking write of "received TERM"
// would stall the loop for good. It writes through a non-blocking
// description of the pipe of its own (the workers' stays blocking), keeps
// what does not fit (up to ownLogMax) for the next write, and counts what
// it had to drop.
func (l *logSink) ownWriter() io.Writer {
	if l.command == "" {
		return os.Stderr
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", l.fd), os.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return os.Stderr
	}
	// Raw descriptor writes: os.File would park the goroutine in the
	// poller on EAGAIN, which is the wait this avoids.
	fd := int(f.Fd())
	l.own = &lossyWriter{fd: fd, f: f}
	return l.own
}

type lossyWriter struct {
	mu      sync.Mutex
	fd      int
	f       *os.File // keeps fd open
	pending []byte
	lost    int // lines dropped since the last successful write
}

func (w *lossyWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.flush() && w.lost > 0 {
		note := fmt.Sprintf("ss-bridge: %d lines of its own log were lost while the log command did not read\n", w.lost)
		if w.write([]byte(note)) {
			w.lost = 0
		}
	}
	switch {
	case len(w.pending) > 0 && len(w.pending)+len(p) <= ownLogMax:
		w.pending = append(w.pending, p...) // after what is pending, in order
	case len(w.pending) > 0 || !w.write(p):
		w.lost += max(1, strings.Count(string(p), "\n"))
	}
	return len(p), nil
}

// flush writes what is pending, and reports whether nothing is left.
func (w *lossyWriter) flush() bool {
	for len(w.pending) > 0 {
		n, err := unix.Write(w.fd, w.pending)
		if n > 0 {
			w.pending = w.pending[n:]
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			return false
		}
	}
	w.pending = nil
	return true
}

// write writes all of p or, when the pipe is full, keeps the rest pending.
func (w *lossyWriter) write(p []byte) bool {
	for len(p) > 0 {
		n, err := unix.Write(w.fd, p)
		if n > 0 {
			p = p[n:]
		}
		if err == unix.EINTR {
			continue
		}
		if err != nil || n <= 0 {
			if len(p) > 0 && len(p) <= ownLogMax {
				w.pending = append(w.pending, p...)
				return true // kept
			}
			return false
		}
	}
	return true
}

func (w *lossyWriter) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flush()
	w.f.Close()
}

// snapshot is the log in a State.
func (l *logSink) snapshot() *LogState {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := &LogState{FD: l.fd, FallbackFD: int(l.fallback.Fd()), Redirected: l.redirected}
	if l.command != "" {
		st.Command, st.ReadEnd, st.PID = l.command, l.readEnd, l.pid
		if l.pid != 0 && l.pidfd != nil {
			// Not Fd(), which would make the descriptor blocking under the
			// poller that watch waits with, should the exec fail.
			if rc, err := l.pidfd.SyscallConn(); err == nil {
				rc.Control(func(fd uintptr) { st.PIDFD = int(fd) })
			}
		}
	}
	return st
}

// adoptLog takes over the log an earlier image of this process had open,
// and watches its command again.
func adoptLog(st *LogState) *logSink {
	for _, fd := range []int{st.FD, st.FallbackFD, st.ReadEnd, st.PIDFD} {
		if fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
	l := &logSink{fd: st.FD, fallback: os.NewFile(uintptr(st.FallbackFD), "stderr"), redirected: st.Redirected,
		command: st.Command, readEnd: st.ReadEnd, pid: st.PID, started: time.Now(), backoff: logRestartMin}
	if l.command == "" {
		return l
	}
	// The old image's pidfd is that very command, even if it has exited
	// (and been reaped) since the snapshot; a pid taken from a state
	// without one could be another process by now.
	pidfd, err := st.PIDFD, error(nil)
	if pidfd == 0 {
		err = unix.ESRCH
		if st.PID > 0 {
			pidfd, err = unix.PidfdOpen(st.PID, 0)
		}
	}
	if err != nil {
		// No command ran at the exec (it had exited and was waiting for its
		// restart), or it has exited since: start it now, or nothing would
		// read the pipe and the workers would block once it is full.
		l.pid = 0
		if err := l.start(); err != nil {
			fmt.Fprintf(os.Stderr, "ss-bridge: restart log command %q: %v\n", l.command, err)
		}
		return l
	}
	unix.CloseOnExec(pidfd)
	unix.SetNonblock(pidfd, true)
	l.pidfd = os.NewFile(uintptr(pidfd), "pidfd")
	return l
}
