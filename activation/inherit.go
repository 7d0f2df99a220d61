package activation

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Inherited is a socket passed in by systemd socket activation.
type Inherited struct {
	Socket
	// Name is the descriptor's entry in LISTEN_FDNAMES, exactly as systemd
	// passed it, or "" without LISTEN_FDNAMES: a socket unit's
	// FileDescriptorName= (by default the unit's name), or the FDNAME a
	// descriptor was stored under in the descriptor store.
	Name string
}

// listenFDsStart is SD_LISTEN_FDS_START, the first descriptor systemd passes.
const listenFDsStart = 3

// Inherit takes the sockets systemd passes on descriptors 3 and up when
// LISTEN_FDS is set and LISTEN_PID is this process. It returns nil, nil when
// the process is not socket-activated: LISTEN_FDS or LISTEN_PID unset,
// LISTEN_PID another process, or no descriptors. It never changes the
// environment: the caller must remove LISTEN_FDS, LISTEN_PID and
// LISTEN_FDNAMES from the workers' environment.
//
// Every descriptor is made close-on-exec and described by a Spec that
// compares equal to what ParsePort or ParsePath gives for its address, with
// WorkerFD -1: key "8080" for TCP on 0.0.0.0:8080 (as --port=8080 gives),
// "127.0.0.1:8080", "[::1]:8080", "[::]:8080", the path for a unix stream
// socket, and Network UDP for a datagram socket (the key has no 'u').
// Addresses are written in canonical form, so that --port=[0:0::1]:80 does
// not match the inherited [::1]:80. An abstract unix socket gets "@" and its
// name as key and Path, an unnamed one just "@". Close leaves an inherited
// unix socket's file in place; Adopt takes it over.
//
// A malformed LISTEN_FDS or LISTEN_PID, a LISTEN_FDNAMES with another number
// of names than descriptors, or a descriptor that is not a listening TCP or
// unix stream socket or a UDP socket is an error. The descriptors are
// left open then, close-on-exec as far as they were reached.
func Inherit() ([]Inherited, error) {
	fdsText, ok := os.LookupEnv("LISTEN_FDS")
	if !ok {
		return nil, nil
	}
	pidText, ok := os.LookupEnv("LISTEN_PID")
	if !ok {
		return nil, nil
	}
	pid, err := parseUint(pidText)
	if err != nil || pid == 0 {
		return nil, fmt.Errorf("socket activation: LISTEN_PID=%q is not a process id", pidText)
	}
	if pid != os.Getpid() {
		return nil, nil
	}
	n, err := parseUint(fdsText)
	if err != nil || n > 1<<20 {
		return nil, fmt.Errorf("socket activation: LISTEN_FDS=%q is not a number of descriptors", fdsText)
	}
	var names []string
	if namesText, ok := os.LookupEnv("LISTEN_FDNAMES"); ok && (n > 0 || namesText != "") {
		names = strings.Split(namesText, ":")
		if len(names) != n {
			return nil, fmt.Errorf("socket activation: LISTEN_FDNAMES=%q has %d names for LISTEN_FDS=%d descriptors", namesText, len(names), n)
		}
	}
	if n == 0 {
		return nil, nil
	}

	socks := make([]Inherited, n)
	for i := range socks {
		fd := listenFDsStart + i
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err == nil {
			_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFD, flags|unix.FD_CLOEXEC)
		}
		if err != nil {
			return nil, fmt.Errorf("socket activation: LISTEN_FDS=%d, but descriptor %d: %w", n, fd, err)
		}
		socks[i].FD, socks[i].Inherited = fd, true
		if names != nil {
			socks[i].Name = names[i]
		}
	}
	for i := range socks {
		spec, err := describe(socks[i].FD)
		if err != nil {
			what := strconv.Itoa(socks[i].FD)
			if socks[i].Name != "" {
				what += " (" + socks[i].Name + ")"
			}
			return nil, fmt.Errorf("socket activation: descriptor %s: %w", what, err)
		}
		socks[i].Spec = spec
	}
	return socks, nil
}

// describe derives the Spec of a bound socket from its address and type.
func describe(fd int) (Spec, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return Spec{}, fmt.Errorf("not a socket: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return Spec{}, fmt.Errorf("getsockname: %w", err)
	}
	spec := Spec{WorkerFD: -1}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		spec.Network, spec.Port = ipNetwork(typ), sa.Port
		if addr := netip.AddrFrom4(sa.Addr); !addr.IsUnspecified() {
			spec.Host = addr.String()
		}
	case *unix.SockaddrInet6:
		spec.Network, spec.Port, spec.IPv6 = ipNetwork(typ), sa.Port, true
		addr := netip.AddrFrom16(sa.Addr)
		if sa.ZoneId != 0 {
			zone := strconv.Itoa(int(sa.ZoneId))
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				zone = ifi.Name
			}
			addr = addr.WithZone(zone)
		}
		spec.Host = addr.String()
	case *unix.SockaddrUnix:
		if typ == unix.SOCK_STREAM {
			spec.Network = Unix
		}
		spec.Key, spec.Path = sa.Name, sa.Name
	default:
		return Spec{}, fmt.Errorf("not an IPv4, IPv6 or unix socket")
	}
	if spec.Network == "" {
		return Spec{}, fmt.Errorf("%s socket: neither --port nor --path describes it", typeName(typ, sa))
	}
	if spec.Network != Unix {
		switch {
		case spec.IPv6:
			spec.Key = fmt.Sprintf("[%s]:%d", spec.Host, spec.Port)
		case spec.Host != "":
			spec.Key = fmt.Sprintf("%s:%d", spec.Host, spec.Port)
		default:
			spec.Key = strconv.Itoa(spec.Port)
		}
	}
	if strings.ContainsAny(spec.Key, ";=\x00") {
		return Spec{}, fmt.Errorf("address %q cannot be a key in SERVER_STARTER_PORT", spec.Key)
	}
	if typ == unix.SOCK_STREAM {
		listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			return Spec{}, fmt.Errorf("SO_ACCEPTCONN: %w", err)
		}
		if listening == 0 {
			return Spec{}, fmt.Errorf("%s is a connection, not a listening socket (Accept=yes is not supported)", spec.display())
		}
	}
	return spec, nil
}

func ipNetwork(typ int) Network {
	switch typ {
	case unix.SOCK_STREAM:
		return TCP
	case unix.SOCK_DGRAM:
		return UDP
	}
	return ""
}

func typeName(typ int, sa unix.Sockaddr) string {
	family := "IP"
	if _, ok := sa.(*unix.SockaddrUnix); ok {
		family = "unix"
	}
	switch typ {
	case unix.SOCK_STREAM:
		return family + " stream"
	case unix.SOCK_DGRAM:
		return family + " datagram"
	case unix.SOCK_SEQPACKET:
		return family + " seqpacket"
	case unix.SOCK_RAW:
		return family + " raw"
	}
	return family + " type " + strconv.Itoa(typ)
}
