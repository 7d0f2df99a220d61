package notify

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/proc"
	"golang.org/x/sys/unix"
)

// WorkerSocket is the NOTIFY_SOCKET of one worker: a datagram socket in a
// private directory that takes the worker's notifications, and those of its
// descendants, and drops everyone else's.
//
// The worker's pid is known only once it has been started, and the socket
// must exist before that. So Listen binds the socket, the worker starts with
// Path in its environment, and Watch then names the worker and starts
// reading. Datagrams sent before Watch wait in the kernel's queue (a sender
// blocks while it is full) and are checked against the worker once it is
// named, so none is wrongly accepted or dropped for coming early.
type WorkerSocket struct {
	// Dropped, when set before Watch, is called with the reason for every
	// datagram that is not delivered on Messages, such as "notify message
	// from pid 42 (not worker 40 or its descendant) ignored". It is called
	// from the socket's goroutine and must not block.
	Dropped func(error)

	dir, path string
	conn      *net.UnixConn
	messages  chan Message
	done      chan struct{} // closed by Close
	stopped   chan struct{} // closed when the reading goroutine has returned
	worker    atomic.Int64

	mu       sync.Mutex
	watching bool
	closed   bool
}

// Message is one notification accepted from the worker or a descendant.
type Message struct {
	// PID is the sender's process id, from the kernel's credentials.
	PID int
	// Ready, Stopping and Watchdog are READY=1, STOPPING=1 and WATCHDOG=1.
	Ready, Stopping, Watchdog bool
	// Status is the value of STATUS= ("" without one; see Fields).
	Status string
	// Fields holds every KEY=VALUE line of the datagram; a key given twice
	// keeps its last value. Descriptors sent along (FDSTORE=1) are closed on
	// receipt: workers have no descriptor store.
	Fields map[string]string
}

// maxMessageLen is the longest notification systemd accepts
// (NOTIFY_BUFFER_MAX); longer ones are dropped, as systemd drops them.
const maxMessageLen = 4096

// maxReadRate bounds the datagrams read from one socket a second, far above
// what a worker needs, which is a handful. It is enforced per batch of
// readBatch datagrams, so a burst up to the kernel's queue costs no delay.
const (
	maxReadRate = 2000
	readBatch   = 200
)

// maxAncestry bounds the walk from a sender up to the worker.
const maxAncestry = 128

// Listen makes a directory in dir, or in the default directory for
// temporary files when dir is "", and binds a socket with a random name,
// "<16 hex digits>.sock", in it with SO_PASSCRED, so that every datagram
// carries its sender's pid. Nothing is read until Watch.
//
// A worker may change its user (setpriv, a server dropping root) and must
// still reach its socket, so the directory can be entered by anyone (mode
// 0711) and the socket written by anyone (0666). The directory cannot be
// listed, so only who reads the worker's environment finds the socket: its
// own user and root. Whoever finds it is still checked by pid.
func Listen(dir string) (*WorkerSocket, error) {
	d, err := os.MkdirTemp(dir, "notify-")
	if err != nil {
		return nil, fmt.Errorf("make notify socket directory: %w", err)
	}
	fail := func(err error) (*WorkerSocket, error) {
		os.RemoveAll(d)
		return nil, err
	}
	// The worker may run in another directory: NOTIFY_SOCKET must be absolute.
	if d, err = filepath.Abs(d); err != nil {
		return fail(fmt.Errorf("make notify socket directory: %w", err))
	}
	if err := os.Chmod(d, 0o711); err != nil {
		return fail(fmt.Errorf("make notify socket directory: %w", err))
	}
	var random [8]byte
	if _, err := rand.Read(random[:]); err != nil {
		return fail(fmt.Errorf("make notify socket name: %w", err))
	}
	path := filepath.Join(d, hex.EncodeToString(random[:])+".sock")
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return fail(fmt.Errorf("notify socket path %s is longer than a unix socket address allows (107 bytes)", path))
	}
	conn, err := bindNotify(path)
	if err != nil {
		return fail(fmt.Errorf("listen for notifications on %s: %w", path, err))
	}
	// bind made the socket file with the umask's permissions.
	if err := os.Chmod(path, 0o666); err != nil {
		conn.Close()
		return fail(fmt.Errorf("listen for notifications on %s: %w", path, err))
	}
	return &WorkerSocket{
		dir:      d,
		path:     path,
		conn:     conn,
		messages: make(chan Message, 16),
		done:     make(chan struct{}),
		stopped:  make(chan struct{}),
	}, nil
}

func bindNotify(path string) (*net.UnixConn, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("socket: %w", err)
	}
	// Set before bind: a datagram queued without credentials could not be
	// checked.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("SO_PASSCRED: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind: %w", err)
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

// Path is the socket's absolute path, the worker's NOTIFY_SOCKET.
func (s *WorkerSocket) Path() string { return s.path }

// Messages delivers the accepted notifications, in order of arrival. It is
// closed by Close; what was delivered before stays readable. Read it
// promptly: while it is full nothing is read from the socket, and once the
// kernel's queue is full too the worker's sd_notify blocks.
//
// The socket is read at most maxReadRate datagrams a second: a worker (or a
// stranger) flooding it is slowed down, its sd_notify blocking meanwhile,
// rather than keeping a core busy here.
func (s *WorkerSocket) Messages() <-chan Message { return s.messages }

// Watch names the worker, pid, and starts delivering: from now on a
// datagram is accepted when its sender is pid or descends from it. A sender
// is checked when its datagram is read, by walking up its parents in /proc:
// one that has already exited, or whose parent has, can no longer be traced
// to the worker and is dropped, unless it is the worker itself. Calling Watch
// again makes the socket follow another pid; after Close it does nothing.
func (s *WorkerSocket) Watch(pid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.worker.Store(int64(pid))
	if !s.watching {
		s.watching = true
		go s.read(s.Dropped)
	}
}

// Close stops reading, closes Messages, and removes the socket and its
// directory. Datagrams still queued are discarded, descriptors with them.
func (s *WorkerSocket) Close() error { return s.close(true) }

// Release stops reading, closes Messages and this process's descriptor, and
// leaves the socket file and its directory in place: for a socket whose
// handover failed, so that the descriptor the old image passed on stays the
// one that owns them. Datagrams still queued stay in the kernel's queue if
// another descriptor holds the socket.
func (s *WorkerSocket) Release() error { return s.close(false) }

func (s *WorkerSocket) close(removeFiles bool) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	watching := s.watching
	s.mu.Unlock()

	close(s.done)
	err := s.conn.Close()
	if watching {
		<-s.stopped
	} else {
		close(s.messages)
	}
	if removeFiles {
		if rmErr := os.RemoveAll(s.dir); rmErr != nil {
			err = errors.Join(err, rmErr)
		}
	}
	if err != nil {
		return fmt.Errorf("close notify socket %s: %w", s.path, err)
	}
	return nil
}

// FD is the socket's descriptor in this process, for a handover across an
// execve: the caller clears its close-on-exec flag just before the exec, and
// sets it again if the exec fails. It is valid until Close or Release.
func (s *WorkerSocket) FD() (int, error) {
	raw, err := s.conn.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("notify socket %s: %w", s.path, err)
	}
	fd := -1
	if err := raw.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return -1, fmt.Errorf("notify socket %s: %w", s.path, err)
	}
	return fd, nil
}

// AdoptWorkerSocket takes over a socket that Listen made in an earlier image
// of this process and that was handed over across an execve as descriptor
// fd, bound at path. Like Listen it returns a socket that reads nothing
// until Watch names the worker; Close removes the socket and its directory.
//
// fd itself is duplicated, not taken: it is marked close-on-exec, so that no
// worker inherits it, and left open, so that a failed resume can still hand
// it to a rollback image. The caller closes it once the handover is final.
// AdoptWorkerSocket fails, having changed nothing but that flag, when fd is
// not a unix datagram socket bound to path and passing credentials: the
// sender check needs them, and another socket at that number means the
// handed-over state does not describe this process.
func AdoptWorkerSocket(fd int, path string) (*WorkerSocket, error) {
	fail := func(err error) (*WorkerSocket, error) {
		return nil, fmt.Errorf("adopt notify socket %s (descriptor %d): %w", path, fd, err)
	}
	if !filepath.IsAbs(path) || filepath.Base(path) == path {
		return fail(errors.New("not an absolute path in a directory of its own"))
	}
	unix.CloseOnExec(fd)
	if domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil {
		return fail(err)
	} else if domain != unix.AF_UNIX {
		return fail(errors.New("not a unix socket"))
	}
	if typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		return fail(err)
	} else if typ != unix.SOCK_DGRAM {
		return fail(errors.New("not a datagram socket"))
	}
	if cred, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED); err != nil {
		return fail(err)
	} else if cred == 0 {
		return fail(errors.New("SO_PASSCRED is off"))
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail(err)
	}
	if un, ok := sa.(*unix.SockaddrUnix); !ok || un.Name != path {
		return fail(fmt.Errorf("bound to %v, not to the path", sa))
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fail(err)
	}
	f := os.NewFile(uintptr(dup), path)
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return fail(err)
	}
	conn, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return fail(fmt.Errorf("not a unix socket but %T", c))
	}
	return &WorkerSocket{
		dir:      filepath.Dir(path),
		path:     path,
		conn:     conn,
		messages: make(chan Message, 16),
		done:     make(chan struct{}),
		stopped:  make(chan struct{}),
	}, nil
}

func (s *WorkerSocket) read(dropped func(error)) {
	defer close(s.stopped)
	defer close(s.messages)
	drop := func(err error) {
		if dropped != nil {
			dropped(err)
		}
	}
	buf := make([]byte, maxMessageLen)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(maxFDs*4))
	batchStart, inBatch := time.Now(), 0
	for {
		if inBatch++; inBatch > readBatch {
			if wait := time.Until(batchStart.Add(readBatch * time.Second / maxReadRate)); wait > 0 {
				select {
				case <-time.After(wait):
				case <-s.done:
					return
				}
			}
			batchStart, inBatch = time.Now(), 1
		}
		n, oobn, flags, _, err := s.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			drop(fmt.Errorf("read notify socket %s: %w", s.path, err))
			continue
		}
		pid, err := sender(oob[:oobn])
		if err != nil {
			drop(err)
			continue
		}
		worker := int(s.worker.Load())
		switch {
		case pid == 0:
			drop(fmt.Errorf("notify message without sender credentials ignored"))
			continue
		case flags&unix.MSG_TRUNC != 0:
			drop(fmt.Errorf("notify message from pid %d ignored: longer than %d bytes", pid, maxMessageLen))
			continue
		case !descends(pid, worker):
			drop(fmt.Errorf("notify message from pid %d (not worker %d or its descendant) ignored", pid, worker))
			continue
		}
		select {
		case s.messages <- parse(pid, buf[:n]):
		case <-s.done:
			return
		}
	}
}

// sender closes every descriptor passed in the control messages and returns
// the sender's pid (0 without credentials).
func sender(oob []byte) (int, error) {
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		// ReadMsgUnix asks for close-on-exec descriptors, so one that
		// cannot be parsed, and so not closed, leaks only into this process;
		// the kernel writes well-formed control messages.
		return 0, fmt.Errorf("notify message with malformed control data ignored: %w", err)
	}
	pid := 0
	for i := range cmsgs {
		if cmsgs[i].Header.Level != unix.SOL_SOCKET {
			continue
		}
		switch cmsgs[i].Header.Type {
		case unix.SCM_RIGHTS:
			if fds, err := unix.ParseUnixRights(&cmsgs[i]); err == nil {
				for _, fd := range fds {
					unix.Close(fd)
				}
			}
		case unix.SCM_CREDENTIALS:
			if cred, err := unix.ParseUnixCredentials(&cmsgs[i]); err == nil {
				pid = int(cred.Pid)
			}
		}
	}
	return pid, nil
}

// descends reports whether pid is worker or, going up through the parents
// in /proc, a descendant of it.
func descends(pid, worker int) bool {
	for range maxAncestry {
		if pid == worker {
			return true
		}
		if pid <= 1 {
			return false
		}
		if pid = proc.Parent(pid); pid < 0 {
			return false
		}
	}
	return false
}

func parse(pid int, data []byte) Message {
	m := Message{PID: pid, Fields: map[string]string{}}
	for line := range strings.SplitSeq(string(data), "\n") {
		key, value, ok := strings.Cut(line, "=")
		if !ok || key == "" {
			continue
		}
		m.Fields[key] = value
	}
	m.Ready = m.Fields["READY"] == "1"
	m.Stopping = m.Fields["STOPPING"] == "1"
	m.Watchdog = m.Fields["WATCHDOG"] == "1"
	m.Status = m.Fields["STATUS"]
	return m
}
