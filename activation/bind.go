package activation

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"

	"time"

	"golang.org/x/sys/unix"
)

// Socket is a listening socket held by the bridge for its workers.
//
// The descriptor is a plain number, never an *os.File or a net.Listener: the
// bridge never accepts on it, so it stays out of the Go runtime's poller and
// nothing in the bridge ever changes its O_NONBLOCK flag, which is shared with
// every worker holding the socket.
type Socket struct {
	Spec
	// FD is the descriptor in this process. It is close-on-exec; workers get
	// the socket through an explicit descriptor table (see Files).
	FD int
	// Inherited is true for a socket passed in by socket activation (see
	// Inherit), false for one this process bound.
	Inherited bool
	// owned records the unix socket file this process created, so that Close
	// removes that file and not one that replaced it since.
	owned *FileID
}

// FileID identifies a file by device and inode number.
type FileID struct{ Dev, Ino uint64 }

// Options tunes how sockets are bound.
type Options struct {
	// Backlog is the listen(2) backlog; 0 means SOMAXCONN.
	Backlog int
	// PathMode is the permission of unix socket files; 0 means 0777, which
	// is what 0.35 gives by binding with umask 0.
	PathMode os.FileMode
	// Warn receives warnings such as the removal of a stale socket file.
	// Nil discards them.
	Warn io.Writer
}

// Open returns a socket for every spec, in order, followed by the inherited
// sockets no spec asked for, and assigns the descriptor each worker gets it
// on (see AssignWorkerFDs). A spec uses an inherited socket of the same
// network and address instead of binding one, so that one configuration works
// with and without a systemd socket unit; the socket keeps the spec's key, as
// the operator wrote it. Specs with port 0 never match.
//
// On error every socket Open bound is closed and its file removed; inherited
// sockets are left open. The error names the spec that failed.
func Open(specs []Spec, inherited []Socket, opts Options) ([]Socket, error) {
	if err := checkSpecs(specs, len(specs)+len(inherited)); err != nil {
		return nil, err
	}
	socks := make([]Socket, 0, len(specs)+len(inherited))
	used := make([]bool, len(inherited))
	var bound []Socket
	for _, spec := range specs {
		if i := match(spec, inherited, used); i >= 0 {
			used[i] = true
			s := inherited[i]
			s.Spec = spec
			socks = append(socks, s)
			continue
		}
		s, err := bind(spec, opts)
		if err != nil {
			CloseAll(bound)
			return nil, err
		}
		bound = append(bound, s)
		socks = append(socks, s)
	}
	for i, s := range inherited {
		if !used[i] {
			socks = append(socks, s)
		}
	}
	if err := AssignWorkerFDs(socks); err != nil {
		CloseAll(bound)
		return nil, err
	}
	return socks, nil
}

// checkSpecs fails, before anything is bound, on a socket asked for twice and
// on a descriptor pin that the workers could not get; the workers will get
// nsockets sockets.
func checkSpecs(specs []Spec, nsockets int) error {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit RLIMIT_NOFILE: %w", err)
	}
	seen := map[string]bool{}
	for _, spec := range specs {
		// A worker's descriptor table is set up in the forked child, under
		// our limit, and syscall.ForkExec needs room above it: one
		// descriptor for its error pipe and one for each socket it moves up
		// before putting it in place. A pin that does not fit fails every
		// start with EBADF.
		if need := uint64(spec.WorkerFD) + 3 + uint64(nsockets); spec.Pinned && need > lim.Cur {
			return fmt.Errorf("--port %s=%d: descriptor %d needs a limit of open files of at least %d (RLIMIT_NOFILE is %d)",
				spec.display(), spec.WorkerFD, spec.WorkerFD, need, lim.Cur)
		}
		key := string(spec.Network) + " " + spec.Key
		switch {
		case spec.Network == Unix:
			// Two spellings of one path are one file: binding the second
			// would replace the first's socket file, orphaning its socket.
			abs, err := filepath.Abs(spec.Path)
			if err != nil {
				return fmt.Errorf("--path %s: %w", spec.Path, err)
			}
			key = "unix " + abs
		case spec.Port == 0:
			continue // each gets a port of its own
		}
		if seen[key] {
			if spec.Network == Unix {
				return fmt.Errorf("--path %s is given twice", spec.Path)
			}
			// TCP would fail to bind, but UDP with SO_REUSEADDR would not.
			return fmt.Errorf("--port %s is given twice", spec.display())
		}
		seen[key] = true
	}
	return nil
}

// Requested reports whether one of specs asks for the address s is bound to,
// so that Open would use s for it.
func Requested(s Socket, specs []Spec) bool {
	for _, spec := range specs {
		if match(spec, []Socket{s}, []bool{false}) == 0 {
			return true
		}
	}
	return false
}

// match returns the index of the unused inherited socket bound where spec
// asks, or -1.
func match(spec Spec, inherited []Socket, used []bool) int {
	if spec.Network != Unix && spec.Port == 0 {
		return -1
	}
	for i, s := range inherited {
		if used[i] || s.Network != spec.Network {
			continue
		}
		if spec.Network == Unix {
			if s.Path == spec.Path {
				return i
			}
			continue
		}
		if sameAddress(spec, s.FD) {
			return i
		}
	}
	return -1
}

// sameAddress reports whether the socket fd is bound where spec asks.
func sameAddress(spec Spec, fd int) bool {
	_, want, err := resolve(spec)
	if err != nil {
		return false
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		return false
	}
	switch w := want.(type) {
	case *unix.SockaddrInet4:
		g, ok := got.(*unix.SockaddrInet4)
		return ok && g.Port == w.Port && g.Addr == w.Addr
	case *unix.SockaddrInet6:
		g, ok := got.(*unix.SockaddrInet6)
		return ok && g.Port == w.Port && g.Addr == w.Addr
	}
	return false
}

func bind(spec Spec, opts Options) (Socket, error) {
	if spec.Network == Unix {
		return bindUnix(spec, opts)
	}
	what := "bind " + spec.display()
	family, sa, err := resolve(spec)
	if err != nil {
		return Socket{}, fmt.Errorf("%s: %w", what, err)
	}
	typ := unix.SOCK_STREAM
	if spec.Network == UDP {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return Socket{}, fmt.Errorf("%s: socket: %w", what, err)
	}
	fail := func(step string, err error) (Socket, error) {
		unix.Close(fd)
		if step != "" {
			return Socket{}, fmt.Errorf("%s: %s: %w", what, step, err)
		}
		return Socket{}, fmt.Errorf("%s: %w", what, err)
	}
	// SO_REUSEPORT is deliberately never set: with it, connections queued on
	// a socket are dropped when that socket closes.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fail("SO_REUSEADDR", err)
	}
	if family == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return fail("IPV6_V6ONLY", err)
		}
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("", err)
	}
	if spec.Network == TCP {
		if err := unix.Listen(fd, backlog(opts)); err != nil {
			return fail("listen", err)
		}
	}
	return Socket{Spec: spec, FD: fd}, nil
}

func backlog(opts Options) int {
	if opts.Backlog > 0 {
		return opts.Backlog
	}
	return unix.SOMAXCONN
}

// display is how errors name the spec: the key, with "udp " for UDP.
func (s Spec) display() string {
	if s.Network == UDP {
		return "udp " + s.Key
	}
	return s.Key
}

func resolve(spec Spec) (int, unix.Sockaddr, error) {
	if spec.IPv6 {
		addr, err := netip.ParseAddr(spec.Host)
		if err != nil || !addr.Is6() {
			return 0, nil, fmt.Errorf("invalid IPv6 address %q", spec.Host)
		}
		sa := &unix.SockaddrInet6{Port: spec.Port, Addr: addr.As16()}
		if zone := addr.Zone(); zone != "" {
			ifi, err := net.InterfaceByName(zone)
			if err != nil {
				return 0, nil, fmt.Errorf("IPv6 zone %q: %w", zone, err)
			}
			sa.ZoneId = uint32(ifi.Index)
		}
		return unix.AF_INET6, sa, nil
	}
	sa := &unix.SockaddrInet4{Port: spec.Port}
	if spec.Host != "" {
		ip, err := lookupIPv4(spec.Host)
		if err != nil {
			return 0, nil, err
		}
		copy(sa.Addr[:], ip)
	}
	return unix.AF_INET, sa, nil
}

// lookupIPv4 resolves a host as 0.35's gethostbyname does: IPv4 only.
func lookupIPv4(host string) (net.IP, error) {
	if ip := net.ParseIP(host); ip != nil {
		if ip4 := ip.To4(); ip4 != nil {
			return ip4, nil
		}
		return nil, fmt.Errorf("%q is not an IPv4 address (write IPv6 addresses in brackets)", host)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIP(ctx, "ip4", host)
	if err != nil {
		return nil, fmt.Errorf("resolve host %s: %w", host, err)
	}
	return ips[0].To4(), nil
}

func bindUnix(spec Spec, opts Options) (Socket, error) {
	path := spec.Path
	what := "listen on " + path
	// Two bridges given the same path at once would each find the file
	// stale, remove it and bind: the second would remove the socket of the
	// first, which refuses connections from bind until listen. A lock on the
	// directory, held from the check to listen, orders them; the second then
	// finds the path in use.
	defer lockDir(filepath.Dir(path))()
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != os.ModeSocket {
			return Socket{}, fmt.Errorf("%s: %s exists and is not a socket; not removing it", what, describeMode(st.Mode()))
		}
		if err := checkStale(path); err != nil {
			return Socket{}, fmt.Errorf("%s: %w", what, err)
		}
		if opts.Warn != nil {
			fmt.Fprintf(opts.Warn, "removing existing socket file:%s\n", path)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return Socket{}, fmt.Errorf("remove existing socket file %s: %w", path, err)
		}
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return Socket{}, fmt.Errorf("%s: socket: %w", what, err)
	}
	mode := opts.PathMode & 0o777
	if mode == 0 {
		mode = 0o777
	}
	// The umask is process-wide, but nothing else in the bridge creates
	// files while sockets are being bound.
	old := unix.Umask(int(^mode & 0o777))
	err = unix.Bind(fd, &unix.SockaddrUnix{Name: path})
	unix.Umask(old)
	if err != nil {
		unix.Close(fd)
		return Socket{}, fmt.Errorf("%s: %w", what, err)
	}
	sock := Socket{Spec: spec, FD: fd}
	if id, err := statID(path); err == nil {
		sock.owned = &id
	}
	if err := unix.Listen(fd, backlog(opts)); err != nil {
		sock.Close()
		return Socket{}, fmt.Errorf("%s: listen: %w", what, err)
	}
	return sock, nil
}

// lockDir takes an exclusive flock on the directory dir and returns its
// release. The lock only orders bridges among themselves, so when it cannot be
// had (an unreadable directory, or another user holding it to stall us) we go
// on without it after a while rather than fail.
func lockDir(dir string) (unlock func()) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return func() {}
	}
	for deadline := time.Now().Add(dirLockWait); ; time.Sleep(time.Millisecond) {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil || !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			break
		}
	}
	return func() { unix.Close(fd) }
}

// dirLockWait bounds the wait for lockDir: binding takes microseconds.
const dirLockWait = 2 * time.Second

// checkStale fails unless the socket file at path is stale: only a refused
// connection proves that nobody listens on it. Removing a live one would
// leave its server running but unreachable.
func checkStale(path string) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
	switch {
	case errors.Is(err, unix.ECONNREFUSED), errors.Is(err, unix.ENOENT):
		return nil
	case err == nil, errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINPROGRESS):
		// EAGAIN: a listener whose backlog is full.
		return fmt.Errorf("%s is in use: another process listens on it", path)
	case errors.Is(err, unix.EPROTOTYPE):
		return fmt.Errorf("%s is in use by a datagram socket", path)
	}
	return fmt.Errorf("%s exists and may be in use (connect: %w); not removing it", path, err)
}

func describeMode(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m.IsRegular():
		return "a regular file"
	case m&os.ModeSymlink != 0:
		return "a symbolic link"
	default:
		return "a file of type " + m.Type().String()
	}
}

// FileIDOf is the identity of the file fd is open on.
func FileIDOf(fd int) (FileID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return FileID{}, err
	}
	return FileID{Dev: uint64(st.Dev), Ino: st.Ino}, nil
}

func statID(path string) (FileID, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return FileID{}, err
	}
	return FileID{Dev: uint64(st.Dev), Ino: st.Ino}, nil
}

// Close closes the descriptor and removes the unix socket file this process
// created, unless another file has replaced it since.
func (s *Socket) Close() error {
	var errs []error
	if s.FD >= 0 {
		if err := unix.Close(s.FD); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", s.Key, err))
		}
		s.FD = -1
	}
	if s.owned != nil {
		if id, err := statID(s.Path); err == nil && id == *s.owned {
			if err := os.Remove(s.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		s.owned = nil
	}
	return errors.Join(errs...)
}

// Disown makes Close leave the socket file in place: for a process that hands
// its sockets to another and exits (the parent of a daemon).
func (s *Socket) Disown() { s.owned = nil }

// Adopt takes over a socket file bound by another process (the parent of a
// daemon), so that Close removes it.
func (s *Socket) Adopt() {
	if s.Network != Unix {
		return
	}
	if id, err := statID(s.Path); err == nil {
		s.owned = &id
	}
}

// OwnedFile returns the identity of the unix socket file Close removes, and
// false when Close removes none: for handing the socket over across an
// execve.
func (s *Socket) OwnedFile() (FileID, bool) {
	if s.owned == nil {
		return FileID{}, false
	}
	return *s.owned, true
}

// AdoptFile makes Close remove the socket file at s.Path, but only while it
// is still the file id: the identity an earlier image of this process got
// from OwnedFile before an execve. Unlike Adopt it does not trust whatever
// is at the path now, which may have replaced our file during the exec.
func (s *Socket) AdoptFile(id FileID) {
	if s.Network == Unix {
		s.owned = &id
	}
}

// CloseAll closes every socket; see Socket.Close.
func CloseAll(socks []Socket) error {
	var errs []error
	for i := range socks {
		errs = append(errs, socks[i].Close())
	}
	return errors.Join(errs...)
}

// SocketType reports SOCK_STREAM or SOCK_DGRAM for an open socket descriptor.
func SocketType(fd int) (int, error) {
	t, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return 0, fmt.Errorf("descriptor %d is not a socket: %w", fd, err)
	}
	return t, nil
}
