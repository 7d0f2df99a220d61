// Package listener gives worker programs the sockets passed by ss-bridge or start_server.
package listener

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/ss-bridge/ss-bridge/internal/text"
	"golang.org/x/sys/unix"
)

const portEnv = "SERVER_STARTER_PORT"

// Socket is one KEY=FD entry of SERVER_STARTER_PORT.
type Socket struct {
	// Key is the --port or --path as the operator wrote it, without any =FD or u:
	// "8080", "127.0.0.1:8080", "[::1]:8080" or "/run/app.sock". It is never empty and
	// never contains '=' or ';'. A TCP and a UDP socket may share a key.
	Key string
	// FD is the inherited descriptor, >= 0.
	FD int
}

// ErrNotSet is returned (possibly wrapped; test with errors.Is) when SERVER_STARTER_PORT is
// not set, i.e. the program was not started by ss-bridge or start_server.
var ErrNotSet = errors.New("SERVER_STARTER_PORT is not set (not started by ss-bridge or start_server)")

// Parse parses a SERVER_STARTER_PORT value: KEY=FD entries joined with ';', each split at
// its first '=', as Server::Starter does. Empty entries (";;", a trailing ';') are ignored,
// so "" gives no sockets and no error. It returns the sockets in the order given, or an
// error naming the first bad entry: one without '=', with an empty KEY, with an FD that is
// not a non-negative decimal integer (digits only, below 2^31), or with an FD that
// an earlier entry has. It does not look at the descriptors.
func Parse(value string) ([]Socket, error) {
	var socks []Socket
	seen := make(map[int]string)
	for _, entry := range strings.Split(value, ";") {
		if entry == "" {
			continue
		}
		key, fdText, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Errorf("%s entry %q: missing '=FD'", portEnv, entry)
		}
		if key == "" {
			return nil, fmt.Errorf("%s entry %q: empty key before '='", portEnv, entry)
		}
		fd, err := strconv.ParseUint(fdText, 10, 31)
		if err != nil {
			return nil, fmt.Errorf("%s entry %q: fd %q is not a non-negative decimal integer below 2^31", portEnv, entry, fdText)
		}
		if prev, dup := seen[int(fd)]; dup {
			return nil, fmt.Errorf("%s entry %q: fd %d is also in entry %q", portEnv, entry, fd, prev)
		}
		seen[int(fd)] = entry
		socks = append(socks, Socket{Key: key, FD: int(fd)})
	}
	return socks, nil
}

// Sockets parses the SERVER_STARTER_PORT environment variable with Parse. It returns
// ErrNotSet if the variable is not set; set but empty gives no sockets and no error.
func Sockets() ([]Socket, error) {
	value, ok := os.LookupEnv(portEnv)
	if !ok {
		return nil, ErrNotSet
	}
	return Parse(value)
}

// Streams returns a listener for every SOCK_STREAM socket (TCP or unix) in
// SERVER_STARTER_PORT, in its order, and none and no error if there are none.
//
// Streams, Packets, Stream and Packet take sockets over: the returned value holds a
// duplicate and the inherited descriptor is closed, so a socket can be taken only once and
// closing the returned value leaves the worker no descriptor of it (ss-bridge keeps its
// own, for the next generation). Sockets of the other type are left alone. They fail if
// SERVER_STARTER_PORT is unset (ErrNotSet) or malformed, if an entry they look at is not an
// open socket, or if a socket they would return was already taken; on failure they close
// what they created and leave every inherited descriptor open.
func Streams() ([]net.Listener, error) {
	return take(unix.SOCK_STREAM, "", true, net.FileListener)
}

// Packets returns a packet connection for every SOCK_DGRAM socket (UDP or unix datagram)
// in SERVER_STARTER_PORT, in its order, and none and no error if there are none. It takes
// the sockets over as Streams does.
func Packets() ([]net.PacketConn, error) {
	return take(unix.SOCK_DGRAM, "", true, net.FilePacketConn)
}

// Stream returns a listener for the SOCK_STREAM socket whose key is exactly key, such as
// "8080" for --port=8080 (not "0.0.0.0:8080"). It fails, naming the keys there are, if
// there is no such socket, and also if there are several. Only the entries with that key
// are looked at; the socket is taken over as Streams does.
func Stream(key string) (net.Listener, error) {
	ls, err := take(unix.SOCK_STREAM, key, false, net.FileListener)
	if err != nil {
		return nil, err
	}
	return ls[0], nil
}

// Packet returns a packet connection for the SOCK_DGRAM socket whose key is exactly key
// ("53" for --port=u53) and is otherwise like Stream.
func Packet(key string) (net.PacketConn, error) {
	cs, err := take(unix.SOCK_DGRAM, key, false, net.FilePacketConn)
	if err != nil {
		return nil, err
	}
	return cs[0], nil
}

// taken holds the descriptors of the SERVER_STARTER_PORT value env that have been taken
// over (and closed), with their socket type. Their numbers may since have been reused for
// other files, so they are never looked at again.
var taken struct {
	sync.Mutex
	env   string
	types map[int]int
}

// take turns the sockets of type sotype in SERVER_STARTER_PORT (all of them, or else the
// single one with key) into values made by conv, and closes their inherited descriptors.
func take[T io.Closer](sotype int, key string, all bool, conv func(*os.File) (T, error)) ([]T, error) {
	value, ok := os.LookupEnv(portEnv)
	if !ok {
		return nil, ErrNotSet
	}
	socks, err := Parse(value)
	if err != nil {
		return nil, err
	}
	taken.Lock()
	defer taken.Unlock()
	if taken.types == nil || taken.env != value {
		taken.env, taken.types = value, make(map[int]int)
	}

	var picked []Socket
	for _, s := range socks {
		if !all && s.Key != key {
			continue
		}
		if t, ok := taken.types[s.FD]; ok {
			if t == sotype {
				return nil, fmt.Errorf("%s socket %q (fd %d) was already taken", typeName(sotype), s.Key, s.FD)
			}
			continue
		}
		t, err := unix.GetsockoptInt(s.FD, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			return nil, fmt.Errorf("%s entry \"%s=%d\": fd %d is not an open socket: %w", portEnv, s.Key, s.FD, s.FD, err)
		}
		if t == sotype {
			picked = append(picked, s)
		}
	}
	if !all && len(picked) != 1 {
		var fds []string
		for _, s := range picked {
			fds = append(fds, strconv.Itoa(s.FD))
		}
		if len(picked) > 1 {
			return nil, fmt.Errorf("%s has several %s sockets with key %q (fds %s)", portEnv, typeName(sotype), key, strings.Join(fds, ", "))
		}
		return nil, fmt.Errorf("no %s socket with key %q: %s", typeName(sotype), key, describeKeys(socks))
	}

	made := make([]T, 0, len(picked))
	for _, s := range picked {
		v, err := convert(s, conv)
		if err != nil {
			for _, m := range made {
				m.Close()
			}
			return nil, err
		}
		made = append(made, v)
	}
	for _, s := range picked {
		unix.Close(s.FD)
		taken.types[s.FD] = sotype
	}
	return made, nil
}

// convert makes a listener or connection from a duplicate of s.FD, leaving s.FD open: an
// *os.File of s.FD itself would close it when garbage collected, even on failure.
func convert[T any](s Socket, conv func(*os.File) (T, error)) (T, error) {
	var zero T
	dup, err := unix.FcntlInt(uintptr(s.FD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return zero, fmt.Errorf("%s entry \"%s=%d\": %w", portEnv, s.Key, s.FD, err)
	}
	f := os.NewFile(uintptr(dup), s.Key)
	defer f.Close()
	v, err := conv(f)
	if err != nil {
		return zero, fmt.Errorf("%s entry \"%s=%d\": %w", portEnv, s.Key, s.FD, err)
	}
	return v, nil
}

func typeName(sotype int) string {
	if sotype == unix.SOCK_STREAM {
		return "stream"
	}
	return "datagram"
}

func describeKeys(socks []Socket) string {
	if len(socks) == 0 {
		return portEnv + " is empty"
	}
	var keys []string
	for _, s := range socks {
		if q := strconv.Quote(s.Key); !slices.Contains(keys, q) {
			keys = append(keys, q)
		}
	}
	return portEnv + " has keys " + strings.Join(keys, ", ")
}

// Ready tells the service manager that the worker is serving, by sending "READY=1" as one
// datagram to the unix socket in NOTIFY_SOCKET (a path, or "@name" for an abstract socket),
// as sd_notify does. Without NOTIFY_SOCKET it does nothing and returns nil.
func Ready() error {
	return notify("READY=1")
}

// Status sends "STATUS=" and s, with its line breaks and NULs replaced by spaces, as Ready does.
func Status(s string) error {
	return notify("STATUS=" + text.OneLine(s))
}

func notify(msg string) error {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return nil
	}
	// On Linux the net package binds and connects a name starting with '@' as an
	// abstract socket (with a leading NUL), so name is passed on unchanged.
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err == nil {
		_, err = c.Write([]byte(msg))
		if cerr := c.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("notify %s to %s: %w", msg, name, err)
	}
	return nil
}
