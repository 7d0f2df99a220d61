// Package activation turns --port and --path specs into listening sockets and into the SERVER_STARTER_PORT value.
package activation

import (
	"fmt"
	"strconv"
	"strings"
)

// Network is the kind of socket a Spec asks for.
type Network string

const (
	TCP  Network = "tcp"
	UDP  Network = "udp"
	Unix Network = "unix"
)

// Spec is one parsed --port or --path value.
type Spec struct {
	// Key names the socket in SERVER_STARTER_PORT, exactly as Server::Starter 0.35
	// keys it: "8080", "127.0.0.1:8080", "[::1]:8080" or the unix socket path.
	Key     string
	Network Network
	// Host is empty for a bare port (bound on 0.0.0.0). It holds an IPv6
	// address without brackets when IPv6 is true.
	Host string
	IPv6 bool
	Port int
	Path string
	// WorkerFD is the descriptor the worker gets the socket on: the one
	// pinned with "=FD", or -1 until AssignWorkerFDs picks one.
	WorkerFD int
	// Pinned is true when the spec ended in "=FD".
	Pinned bool
}

// ParsePort parses a --port value: PORT, HOST:PORT or [V6ADDR]:PORT, with an
// optional "u" before the port for UDP and an optional "=FD" suffix. White
// space around the parts is allowed, as 0.35 allows it.
func ParsePort(value string) (Spec, error) {
	bad := func(why string) (Spec, error) {
		return Spec{}, fmt.Errorf("invalid --port value %q: %s", value, why)
	}
	s := strings.TrimSpace(value)
	spec := Spec{Network: TCP, WorkerFD: -1}

	if i := strings.LastIndexByte(s, '='); i >= 0 {
		fd, err := parseUint(strings.TrimSpace(s[i+1:]))
		if err != nil {
			return bad("the descriptor after '=' must be a non-negative number")
		}
		if fd > 1<<20 {
			return bad("descriptor too large")
		}
		spec.WorkerFD, spec.Pinned = fd, true
		s = strings.TrimSpace(s[:i])
	}

	hostPart, portPart := "", s
	if i := strings.LastIndexByte(s, ':'); i >= 0 {
		hostPart, portPart = strings.TrimSpace(s[:i]), strings.TrimSpace(s[i+1:])
		if hostPart == "" {
			return bad("empty host before ':'")
		}
	}
	if strings.HasPrefix(portPart, "u") {
		spec.Network = UDP
		portPart = portPart[1:]
	}
	port, err := parseUint(portPart)
	if err != nil {
		return bad("the port must be a number, optionally prefixed with 'u' for UDP")
	}
	if port > 65535 {
		return bad("port out of range 0-65535")
	}
	spec.Port = port

	if hostPart == "" {
		spec.Key = strconv.Itoa(port)
		return spec, nil
	}
	if strings.HasPrefix(hostPart, "[") != strings.HasSuffix(hostPart, "]") {
		return bad("unbalanced '[' ']' around the IPv6 address")
	}
	host := strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(hostPart, "["), "]"))
	if !validHost(host) {
		return bad("malformed host")
	}
	spec.Host = host
	if strings.Contains(host, ":") {
		spec.IPv6 = true
		spec.Key = fmt.Sprintf("[%s]:%d", host, port)
	} else {
		spec.Key = fmt.Sprintf("%s:%d", host, port)
	}
	return spec, nil
}

// ParsePath parses a --path value: the path of a unix stream socket.
func ParsePath(path string) (Spec, error) {
	if path == "" {
		return Spec{}, fmt.Errorf("invalid --path value: empty path")
	}
	if strings.ContainsAny(path, ";=") {
		// Either would corrupt SERVER_STARTER_PORT for every worker.
		return Spec{}, fmt.Errorf("invalid --path value %q: must not contain ';' or '='", path)
	}
	if len(path) >= 108 {
		return Spec{}, fmt.Errorf("invalid --path value %q: longer than a unix socket address allows (107 bytes)", path)
	}
	return Spec{Key: path, Network: Unix, Path: path, WorkerFD: -1}, nil
}

func parseUint(s string) (int, error) {
	if s == "" {
		return 0, fmt.Errorf("empty")
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("not a number: %q", s)
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, err
	}
	return n, nil
}

// validHost accepts the characters of host names and IPv4 and IPv6 addresses
// (with a zone): anything else could not resolve, and ';' or '=' would
// corrupt SERVER_STARTER_PORT.
func validHost(host string) bool {
	if host == "" {
		return false
	}
	for _, c := range host {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.ContainsRune(".-_:%", c):
		default:
			return false
		}
	}
	return true
}
