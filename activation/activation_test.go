package activation

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Spec
	}{
		{"8080", Spec{Key: "8080", Network: TCP, Port: 8080, WorkerFD: -1}},
		{" 8080 ", Spec{Key: "8080", Network: TCP, Port: 8080, WorkerFD: -1}},
		{"8080=5", Spec{Key: "8080", Network: TCP, Port: 8080, WorkerFD: 5, Pinned: true}},
		{"8080 = 0", Spec{Key: "8080", Network: TCP, Port: 8080, WorkerFD: 0, Pinned: true}},
		{"127.0.0.1:8080", Spec{Key: "127.0.0.1:8080", Network: TCP, Host: "127.0.0.1", Port: 8080, WorkerFD: -1}},
		{"localhost:80=4", Spec{Key: "localhost:80", Network: TCP, Host: "localhost", Port: 80, WorkerFD: 4, Pinned: true}},
		{"[::1]:8080", Spec{Key: "[::1]:8080", Network: TCP, Host: "::1", IPv6: true, Port: 8080, WorkerFD: -1}},
		{"::1:8080", Spec{Key: "[::1]:8080", Network: TCP, Host: "::1", IPv6: true, Port: 8080, WorkerFD: -1}},
		{"[::]:u53=9", Spec{Key: "[::]:53", Network: UDP, Host: "::", IPv6: true, Port: 53, WorkerFD: 9, Pinned: true}},
		{"u443", Spec{Key: "443", Network: UDP, Port: 443, WorkerFD: -1}},
		{"0.0.0.0:u443", Spec{Key: "0.0.0.0:443", Network: UDP, Host: "0.0.0.0", Port: 443, WorkerFD: -1}},
	} {
		got, err := ParsePort(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParsePort(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "abc", "80x", "99999", "-1", ":80", "[::1", "::1]:80", "[]:80", "h:", "80=", "80=x", "80=-1", "u", "uu80", "1:2:3x", "host name:80", "80=99999999999"} {
		if got, err := ParsePort(bad); err == nil {
			t.Errorf("ParsePort(%q) = %+v, want an error", bad, got)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
			t.Errorf("ParsePort(%q) error %q does not quote the value", bad, err)
		}
	}
}

func FuzzParsePort(f *testing.F) {
	for _, s := range []string{"8080", "127.0.0.1:8080=4", "[::1]:u53", "u443=0", "::1:80", " 1 = 2 ", "[a:b]:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		spec, err := ParsePort(in)
		if err != nil {
			return
		}
		// A parsed spec is usable: its key can sit in SERVER_STARTER_PORT,
		// and writing it back in --port form gives the same spec.
		if spec.Key == "" || strings.ContainsAny(spec.Key, "=;") {
			t.Fatalf("ParsePort(%q) gave key %q", in, spec.Key)
		}
		if spec.Port < 0 || spec.Port > 65535 || (spec.Pinned != (spec.WorkerFD >= 0)) {
			t.Fatalf("ParsePort(%q) = %+v", in, spec)
		}
		again := spec.Key
		if spec.Network == UDP {
			i := strings.LastIndexByte(again, ':') + 1
			again = again[:i] + "u" + again[i:]
		}
		if spec.Pinned {
			again += fmt.Sprintf("=%d", spec.WorkerFD)
		}
		spec2, err := ParsePort(again)
		if err != nil || spec2 != spec {
			t.Fatalf("ParsePort(%q) = %+v, but its form %q parses as %+v, %v", in, spec, again, spec2, err)
		}
	})
}

func TestParsePath(t *testing.T) {
	if s, err := ParsePath("/run/app.sock"); err != nil || s.Key != "/run/app.sock" || s.Network != Unix {
		t.Fatalf("got %+v, %v", s, err)
	}
	for _, bad := range []string{"", "/a;b", "/a=b", "/" + strings.Repeat("x", 120)} {
		if _, err := ParsePath(bad); err == nil {
			t.Errorf("ParsePath(%q) succeeded", bad)
		}
	}
}

func mustSpec(t *testing.T, port string) Spec {
	t.Helper()
	s, err := ParsePort(port)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sockopt(t *testing.T, fd, level, opt int) int {
	t.Helper()
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestOpenBindsTCPAndUDPWithTheRightOptions(t *testing.T) {
	socks, err := Open([]Spec{mustSpec(t, "127.0.0.1:0"), mustSpec(t, "127.0.0.1:u0")}, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer CloseAll(socks)
	tcp, udp := socks[0].FD, socks[1].FD
	if sockopt(t, tcp, unix.SOL_SOCKET, unix.SO_TYPE) != unix.SOCK_STREAM || sockopt(t, udp, unix.SOL_SOCKET, unix.SO_TYPE) != unix.SOCK_DGRAM {
		t.Fatal("wrong socket types")
	}
	for _, fd := range []int{tcp, udp} {
		if sockopt(t, fd, unix.SOL_SOCKET, unix.SO_REUSEADDR) != 1 || sockopt(t, fd, unix.SOL_SOCKET, unix.SO_REUSEPORT) != 0 {
			t.Fatal("want SO_REUSEADDR and no SO_REUSEPORT")
		}
		flags, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if flags&unix.FD_CLOEXEC == 0 {
			t.Fatal("bridge's own descriptor is not close-on-exec")
		}
		fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if fl&unix.O_NONBLOCK != 0 {
			t.Fatal("socket is non-blocking; 0.35's are blocking")
		}
	}
	if sockopt(t, tcp, unix.SOL_SOCKET, unix.SO_ACCEPTCONN) != 1 {
		t.Fatal("TCP socket is not listening")
	}
	sa, _ := unix.Getsockname(tcp)
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", sa.(*unix.SockaddrInet4).Port))
	if err != nil {
		t.Fatalf("connect to the bound socket: %v", err)
	}
	conn.Close()
}

func TestBarePortBindsIPv4Only(t *testing.T) {
	socks, err := Open([]Spec{mustSpec(t, "0")}, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer CloseAll(socks)
	sa, _ := unix.Getsockname(socks[0].FD)
	if _, ok := sa.(*unix.SockaddrInet4); !ok {
		t.Fatalf("bare port bound %T, want IPv4 0.0.0.0", sa)
	}
}

func TestIPv6IsV6Only(t *testing.T) {
	socks, err := Open([]Spec{mustSpec(t, "[::1]:0")}, nil, Options{})
	if err != nil {
		t.Skipf("no IPv6 loopback here: %v", err)
	}
	defer CloseAll(socks)
	if sockopt(t, socks[0].FD, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY) != 1 {
		t.Fatal("IPV6_V6ONLY not set")
	}
}

func TestOpenFailsCleanly(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	sockPath := filepath.Join(dir, "first.sock")
	specs := []Spec{mustSpec(t, "127.0.0.1:0")}
	p, _ := ParsePath(sockPath)
	specs = append(specs, p, mustSpec(t, busy.Addr().String()))
	_, err = Open(specs, nil, Options{})
	if !errors.Is(err, syscall.EADDRINUSE) || !strings.HasPrefix(err.Error(), "bind "+busy.Addr().String()+": ") {
		t.Fatalf("got %v, want 'bind ADDR: address already in use'", err)
	}
	if _, err := os.Lstat(sockPath); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a failed Open left the socket file of an earlier spec behind")
	}
	if _, err := Open([]Spec{mustSpec(t, "nonexistent.invalid:80")}, nil, Options{}); err == nil || !strings.Contains(err.Error(), "nonexistent.invalid") {
		t.Fatalf("unresolvable host: %v", err)
	}
}

func TestUnixSockets(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.sock")
	spec, _ := ParsePath(path)

	// A stale socket file is replaced, with a warning.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()
	var warn bytes.Buffer
	socks, err := Open([]Spec{spec}, nil, Options{Warn: &warn, PathMode: 0o660})
	if err != nil {
		t.Fatal(err)
	}
	if warn.String() != "removing existing socket file:"+path+"\n" {
		t.Fatalf("warning %q", warn.String())
	}
	st, _ := os.Lstat(path)
	if st.Mode().Perm() != 0o660 {
		t.Fatalf("mode %v, want 0660", st.Mode().Perm())
	}
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	CloseAll(socks)
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Close left the socket file")
	}

	// The default mode is 0.35's: bound with umask 0.
	socks, err = Open([]Spec{spec}, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	st, _ = os.Lstat(path)
	if st.Mode().Perm() != 0o777 {
		t.Fatalf("default mode %v, want 0777", st.Mode().Perm())
	}
	// A file that replaced ours is not ours to remove.
	os.Remove(path)
	os.WriteFile(path, nil, 0o644)
	CloseAll(socks)
	if _, err := os.Lstat(path); err != nil {
		t.Fatal("Close removed a file it did not create")
	}

	// A regular file is never removed.
	_, err = Open([]Spec{spec}, nil, Options{})
	if err == nil || !strings.Contains(err.Error(), "regular file") {
		t.Fatalf("got %v, want an error about the regular file", err)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatal("the regular file was removed")
	}
}

func TestWorkerDescriptors(t *testing.T) {
	socks := []Socket{
		{Spec: mustSpec(t, "80"), FD: 10},
		{Spec: mustSpec(t, "81=3"), FD: 11},
		{Spec: Spec{Key: "/s", Network: Unix, WorkerFD: -1}, FD: 12},
		{Spec: mustSpec(t, "[::1]:82=7"), FD: 13},
	}
	if err := AssignWorkerFDs(socks); err != nil {
		t.Fatal(err)
	}
	if got := PortEnv(socks); got != "80=4;81=3;/s=5;[::1]:82=7" {
		t.Fatalf("PortEnv = %q", got)
	}
	none := ^uintptr(0)
	want := []uintptr{0, 1, 2, 11, 10, 12, none, 13}
	if got := Files(socks); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("Files = %v, want %v", got, want)
	}
	clash := []Socket{{Spec: mustSpec(t, "80=5")}, {Spec: mustSpec(t, "81=5")}}
	if err := AssignWorkerFDs(clash); err == nil {
		t.Fatal("two sockets pinned to one descriptor were accepted")
	}
}

func TestOpenUsesInheritedSocketsAtTheRequestedAddress(t *testing.T) {
	inheritedSocks, err := Open([]Spec{mustSpec(t, "127.0.0.1:0"), mustSpec(t, "127.0.0.1:0")}, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer CloseAll(inheritedSocks)
	var inherited []Socket
	for _, s := range inheritedSocks {
		spec, err := describe(s.FD)
		if err != nil {
			t.Fatal(err)
		}
		inherited = append(inherited, Socket{Spec: spec, FD: s.FD})
	}
	port := inherited[0].Port
	socks, err := Open([]Spec{mustSpec(t, fmt.Sprintf("localhost:%d", port)), mustSpec(t, "127.0.0.1:0")}, inherited, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if socks[0].FD != inherited[0].FD || socks[0].Key != fmt.Sprintf("localhost:%d", port) {
		t.Fatalf("requested address not served by the inherited socket: %+v", socks[0])
	}
	if socks[1].FD == inherited[1].FD {
		t.Fatal("a port-0 spec matched an inherited socket")
	}
	if len(socks) != 3 || socks[2].FD != inherited[1].FD {
		t.Fatalf("the unrequested inherited socket is not passed on last: %+v", socks)
	}
	if got := PortEnv(socks); got != fmt.Sprintf("localhost:%d=3;127.0.0.1:0=4;%s=5", port, inherited[1].Key) {
		t.Fatalf("PortEnv = %q", got)
	}
	socks[1].Close()
}

// A unix socket handed over across an execve keeps its claim on exactly the
// file its first image bound: Close removes that file, and leaves one that
// replaced it meanwhile.
func TestAdoptFileRemovesOnlyTheFileBound(t *testing.T) {
	for _, replaced := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "app.sock")
		spec, _ := ParsePath(path)
		socks, err := Open([]Spec{spec}, nil, Options{})
		if err != nil {
			t.Fatal(err)
		}
		id, ok := socks[0].OwnedFile()
		if !ok {
			t.Fatal("a socket file Open bound is not owned")
		}
		// The new image: the same descriptor, rebuilt from the state.
		resumed := Socket{Spec: socks[0].Spec, FD: socks[0].FD}
		resumed.AdoptFile(id)
		socks[0].Disown()
		if replaced {
			os.Remove(path)
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := resumed.Close(); err != nil {
			t.Fatal(err)
		}
		_, err = os.Lstat(path)
		if replaced && err != nil {
			t.Errorf("Close removed the file that replaced the socket: %v", err)
		}
		if !replaced && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Close left the socket file it owned: %v", err)
		}
	}
}

// Two bridges started at once with the same --path over a stale socket file:
// each sees the file refuse connections, so each removes it and binds. Without
// serialising check, remove, bind and listen, the second removes the socket
// the first has just bound (a refused connect also comes from a socket that
// is bound but not listening yet), and both run, the first unreachable.
func TestSamePathBoundAtOnceByTwo(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.sock")
	spec, _ := ParsePath(path)
	both := 0
	for try := 0; try < 300 && both == 0; try++ {
		stale, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		stale.(*net.UnixListener).SetUnlinkOnClose(false)
		stale.Close()
		type result struct {
			socks []Socket
			err   error
		}
		results := make(chan result, 2)
		start := make(chan struct{})
		for range 2 {
			go func() {
				<-start
				socks, err := Open([]Spec{spec}, nil, Options{})
				results <- result{socks, err}
			}()
		}
		close(start)
		var bound [][]Socket
		for range 2 {
			r := <-results
			if r.err == nil {
				bound = append(bound, r.socks)
			} else if !strings.Contains(r.err.Error(), "in use") {
				t.Fatalf("try %d: %v, want an error saying the path is in use", try, r.err)
			}
		}
		if len(bound) == 0 {
			t.Fatalf("try %d: neither bound the stale path", try)
		}
		if len(bound) == 2 {
			both++
		}
		for _, socks := range bound {
			CloseAll(socks)
		}
		os.Remove(path)
	}
	if both > 0 {
		t.Fatal("both bound the same path: the first one's socket was removed under it")
	}
}
