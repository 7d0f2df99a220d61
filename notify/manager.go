// Package notify speaks systemd's notify protocol: up to the service manager, and down from the workers.
package notify

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Manager sends notifications to the service manager at $NOTIFY_SOCKET.
//
// A Manager made without NOTIFY_SOCKET, and a nil *Manager, send nothing:
// every method returns nil. Each method sends one datagram from a fresh
// socket, so a Manager holds no descriptor and is safe for concurrent use.
type Manager struct {
	addr     string // NOTIFY_SOCKET: an absolute path or "@abstract"; "" sends nothing
	watchdog time.Duration
}

// sendTimeout bounds how long a send waits for room in the service
// manager's receive queue.
const sendTimeout = 5 * time.Second

// maxFDs is SCM_MAX_FD, the most descriptors one message can carry.
const maxFDs = 253

// FromEnv returns the Manager of NOTIFY_SOCKET: an absolute path, or an
// abstract socket name after '@'. Unset or empty, it returns a Manager that
// sends nothing. Any other value, such as a relative path, a bare '@' or
// systemd's "vsock:" addresses, is an error. FromEnv also reads the watchdog
// settings (see WatchdogInterval); a malformed WATCHDOG_USEC or WATCHDOG_PID
// is an error. It changes no environment variable.
func FromEnv() (*Manager, error) {
	m := &Manager{}
	addr := os.Getenv("NOTIFY_SOCKET")
	switch {
	case addr == "":
		return m, nil
	case addr == "@":
		return nil, fmt.Errorf("NOTIFY_SOCKET=%q: empty abstract socket name", addr)
	case addr[0] != '/' && addr[0] != '@':
		return nil, fmt.Errorf("NOTIFY_SOCKET=%q: neither an absolute path nor an abstract socket name starting with '@'", addr)
	case len(addr) >= len(unix.RawSockaddrUnix{}.Path):
		return nil, fmt.Errorf("NOTIFY_SOCKET=%q: longer than a unix socket address allows (107 bytes)", addr)
	}
	m.addr = addr
	watchdog, err := watchdogFromEnv()
	if err != nil {
		return nil, err
	}
	m.watchdog = watchdog
	return m, nil
}

func watchdogFromEnv() (time.Duration, error) {
	usecText, ok := os.LookupEnv("WATCHDOG_USEC")
	if !ok {
		return 0, nil
	}
	usec, err := strconv.ParseUint(usecText, 10, 63)
	if err != nil || usec == 0 || usec > uint64(1<<63-1)/1000 {
		return 0, fmt.Errorf("WATCHDOG_USEC=%q: not a positive number of microseconds", usecText)
	}
	if pidText, ok := os.LookupEnv("WATCHDOG_PID"); ok {
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid <= 0 {
			return 0, fmt.Errorf("WATCHDOG_PID=%q: not a process id", pidText)
		}
		if pid != os.Getpid() {
			// The watchdog is some other process's, such as our parent's.
			return 0, nil
		}
	}
	return time.Duration(usec) * time.Microsecond, nil
}

// WatchdogInterval returns how often to call Watchdog: half of WATCHDOG_USEC,
// as sd_watchdog_enabled(3) recommends. It reports false when the service
// manager expects no watchdog pings from this process: WATCHDOG_USEC unset,
// WATCHDOG_PID naming another process, or no NOTIFY_SOCKET.
func (m *Manager) WatchdogInterval() (time.Duration, bool) {
	if m == nil || m.addr == "" || m.watchdog == 0 {
		return 0, false
	}
	return m.watchdog / 2, true
}

// Ready tells the service manager that start-up, or a reload, is complete.
func (m *Manager) Ready() error { return m.Send("READY=1") }

// Reloading tells the service manager that a reload has begun. The
// datagram carries MONOTONIC_USEC, without which systemd 257 never
// considers the reload finished; Ready ends it.
func (m *Manager) Reloading() error { return m.Send("RELOADING=1") }

// Stopping tells the service manager that the service is shutting down.
func (m *Manager) Stopping() error { return m.Send("STOPPING=1") }

// Status sets the one-line status shown by systemctl status. Line breaks
// in text become spaces, and a text longer than MaxStatusLen is cut.
func (m *Manager) Status(text string) error { return m.Send("STATUS=" + statusText(text)) }

// Watchdog pings the service manager's watchdog.
func (m *Manager) Watchdog() error { return m.Send("WATCHDOG=1") }

// ExtendTimeout asks the service manager to wait d longer for the current
// start-up, reload or stop, counted from now. A negative d counts as 0.
func (m *Manager) ExtendTimeout(d time.Duration) error {
	return m.Send(extendTimeout(d))
}

// MainPID tells the service manager that pid is the service's main process.
func (m *Manager) MainPID(pid int) error { return m.Send("MAINPID=" + strconv.Itoa(pid)) }

// Active reports whether there is a service manager to notify.
func (m *Manager) Active() bool { return m != nil && m.addr != "" }

// Send sends assignments ("READY=1", "STATUS=serving") in one datagram,
// waiting up to 5 seconds for room in the service manager's queue: use a
// Queue where waiting is not acceptable. A RELOADING=1 without
// MONOTONIC_USEC gets one added. An assignment without '=' or with a line
// break is an error, and so is a datagram systemd would ignore for its
// length (4096 bytes or more); then nothing is sent.
func (m *Manager) Send(assignments ...string) error {
	return m.send(assignments, nil)
}

// StoreFDs hands copies of fds to the service manager's file descriptor
// store under the name EncodeFDName(key), where systemd keeps them across
// restarts of the service and passes them back in LISTEN_FDS with their
// name in LISTEN_FDNAMES. The service needs FileDescriptorStoreMax= above
// zero, or systemd closes them with only a log message. The descriptors stay
// open here too. A key whose encoded name is longer than systemd allows is an
// error.
func (m *Manager) StoreFDs(key string, fds ...int) error {
	if len(fds) == 0 {
		return fmt.Errorf("store descriptors %q: no descriptors", key)
	}
	if len(fds) > maxFDs {
		return fmt.Errorf("store descriptors %q: %d descriptors, one message carries at most %d", key, len(fds), maxFDs)
	}
	name, err := fdName(key)
	if err != nil {
		return fmt.Errorf("store descriptors: %w", err)
	}
	return m.send([]string{"FDSTORE=1", "FDNAME=" + name}, fds)
}

// RemoveFDs asks the service manager to close the descriptors it stores
// under the name EncodeFDName(key).
func (m *Manager) RemoveFDs(key string) error {
	name, err := fdName(key)
	if err != nil {
		return fmt.Errorf("remove stored descriptors: %w", err)
	}
	return m.Send("FDSTOREREMOVE=1", "FDNAME="+name)
}

func fdName(key string) (string, error) {
	name := EncodeFDName(key)
	if !validFDName(name) {
		return "", fmt.Errorf("key %q encodes to %d characters, more than systemd's %d", key, len(name), maxFDNameLen)
	}
	return name, nil
}

func (m *Manager) send(assignments []string, fds []int) error {
	if m == nil || m.addr == "" {
		return nil
	}
	msg, err := message(assignments)
	if err != nil {
		return err
	}
	if err := m.sendmsg(msg, fds); err != nil {
		return fmt.Errorf("notify service manager at %s (%s): %w", m.addr, summary(msg), err)
	}
	return nil
}

func message(assignments []string) ([]byte, error) {
	reloading, stamped := false, false
	for _, a := range assignments {
		key, _, ok := strings.Cut(a, "=")
		if !ok || key == "" {
			return nil, fmt.Errorf("notify assignment %q: not KEY=VALUE", a)
		}
		if strings.ContainsAny(a, "\n\x00") {
			return nil, fmt.Errorf("notify assignment %q: contains a line break or NUL", a)
		}
		reloading = reloading || a == "RELOADING=1"
		stamped = stamped || key == "MONOTONIC_USEC"
	}
	if len(assignments) == 0 {
		return nil, fmt.Errorf("notify: nothing to send")
	}
	if reloading && !stamped {
		assignments = append(assignments[:len(assignments):len(assignments)], "MONOTONIC_USEC="+strconv.FormatUint(monotonicUsec(), 10))
	}
	msg := []byte(strings.Join(assignments, "\n"))
	if len(msg) >= maxMessageLen {
		// systemd drops the whole datagram, READY=1 and all.
		return nil, fmt.Errorf("notify message (%s) of %d bytes: systemd ignores messages of %d bytes or more", summary(msg), len(msg), maxMessageLen)
	}
	return msg, nil
}

func monotonicUsec() uint64 {
	var ts unix.Timespec
	// CLOCK_MONOTONIC cannot fail on Linux.
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
}

// summary names a message in errors: its keys.
func summary(msg []byte) string {
	var keys []string
	for _, line := range strings.Split(string(msg), "\n") {
		key, _, _ := strings.Cut(line, "=")
		keys = append(keys, key)
	}
	return strings.Join(keys, ",")
}

// sendmsg sends from an unconnected socket: a connected datagram socket
// would do for the text, but passing rights needs sendmsg with an address.
func (m *Manager) sendmsg(msg []byte, fds []int) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(sendTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return fmt.Errorf("SO_SNDTIMEO: %w", err)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	for {
		err = unix.Sendmsg(fd, msg, oob, &unix.SockaddrUnix{Name: m.addr}, unix.MSG_NOSIGNAL)
		if err != unix.EINTR {
			return err
		}
	}
}

// Settings returns what FromEnv read: the NOTIFY_SOCKET address ("" for
// none) and WATCHDOG_USEC (0 for none), for a Manager to be made again with
// NewManager once the environment no longer holds them (across an execve
// of this process).
func (m *Manager) Settings() (addr string, watchdog time.Duration) {
	if m == nil {
		return "", 0
	}
	return m.addr, m.watchdog
}

// NewManager returns the Manager that FromEnv returned when Settings gave
// addr and watchdog.
func NewManager(addr string, watchdog time.Duration) *Manager {
	return &Manager{addr: addr, watchdog: watchdog}
}
