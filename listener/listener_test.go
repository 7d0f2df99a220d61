package listener_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ss-bridge/ss-bridge/listener"
	"golang.org/x/sys/unix"
)

func TestParse(t *testing.T) {
	type S = listener.Socket
	valid := []struct {
		in   string
		want []S
	}{
		{"", nil},
		{";", nil},
		{";;", nil},
		{"8080=3", []S{{"8080", 3}}},
		{"8080=3;", []S{{"8080", 3}}},
		{";8080=3;;", []S{{"8080", 3}}},
		{"8080=3;127.0.0.1:8080=4;[::1]:8080=5;/run/app.sock=6",
			[]S{{"8080", 3}, {"127.0.0.1:8080", 4}, {"[::1]:8080", 5}, {"/run/app.sock", 6}}},
		{"443=3;443=4", []S{{"443", 3}, {"443", 4}}},
		{"0=0", []S{{"0", 0}}},
		{"a=007", []S{{"a", 7}}},
		{" 8080 =3", []S{{" 8080 ", 3}}},
		{"k=2147483647", []S{{"k", 2147483647}}},
	}
	for _, tc := range valid {
		got, err := listener.Parse(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Parse(%q) = %v, %v; want %v, nil", tc.in, got, err, tc.want)
		}
	}

	bad := []struct {
		in, want string // want: substring of the error
	}{
		{"8080", `entry "8080": missing '=FD'`},
		{"8080=3;9090", `entry "9090": missing '=FD'`},
		{"=3", `entry "=3": empty key`},
		{"8080=", `entry "8080=": fd "" is not a non-negative decimal integer`},
		{"8080=-1", `fd "-1" is not`},
		{"8080=+3", `fd "+3" is not`},
		{"8080= 3", `fd " 3" is not`},
		{"8080=3 ", `fd "3 " is not`},
		{"8080=3x", `fd "3x" is not`},
		{"8080=0x3", `fd "0x3" is not`},
		{"8080=1_0", `fd "1_0" is not`},
		{"8080=٣", `fd "٣" is not`},
		{"8080=2147483648", `fd "2147483648" is not`},
		{"8080=99999999999999999999999", `is not a non-negative decimal integer`},
		{"a=b=3", `entry "a=b=3": fd "b=3" is not`},
		{"a==3", `fd "=3" is not`},
		{"a=3;b=3", `entry "b=3": fd 3 is also in entry "a=3"`},
		{"a=3;b=03", `entry "b=03": fd 3 is also in entry "a=3"`},
	}
	for _, tc := range bad {
		got, err := listener.Parse(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), "SERVER_STARTER_PORT entry ") {
			t.Errorf("Parse(%q) = %v, %v; want error containing %q", tc.in, got, err, tc.want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"", ";", "8080=3", "8080=3;127.0.0.1:8080=4;[::1]:8080=5;/run/app.sock=6",
		"443=3;443=4;", "a=b=3", "=3", "x", "a=3;b=03", "a=2147483648", "k=007;;"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		socks, err := listener.Parse(in)
		if err != nil {
			if socks != nil || !strings.HasPrefix(err.Error(), "SERVER_STARTER_PORT entry ") {
				t.Fatalf("Parse(%q) = %v, %v", in, socks, err)
			}
			return
		}
		var entries []string
		fds := map[int]bool{}
		for _, s := range socks {
			if s.Key == "" || strings.ContainsAny(s.Key, "=;") || s.FD < 0 || fds[s.FD] {
				t.Fatalf("Parse(%q) gave bad or duplicate socket %+v", in, s)
			}
			fds[s.FD] = true
			entries = append(entries, s.Key+"="+strconv.Itoa(s.FD))
		}
		if n := len(strings.FieldsFunc(in, func(r rune) bool { return r == ';' })); n != len(socks) {
			t.Fatalf("Parse(%q) gave %d sockets for %d entries", in, len(socks), n)
		}
		again, err := listener.Parse(strings.Join(entries, ";"))
		if err != nil || !slices.Equal(again, socks) {
			t.Fatalf("Parse(%q) = %v, but parsing it joined again gives %v, %v", in, socks, again, err)
		}
	})
}

// closeAtEnd closes fd when the test ends unless it no longer refers to the same file,
// i.e. the package has closed it and the number may have been reused.
func closeAtEnd(t *testing.T, fd int) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var now unix.Stat_t
		if unix.Fstat(fd, &now) == nil && now.Dev == st.Dev && now.Ino == st.Ino {
			unix.Close(fd)
		}
	})
}

// isOpen reports whether fd is still open and refers to the file with inode ino.
func isOpen(t *testing.T, fd int, ino uint64) bool {
	t.Helper()
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Ino == ino
}

func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func socket(t *testing.T, domain, typ int, sa unix.Sockaddr) int {
	t.Helper()
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	closeAtEnd(t, fd)
	if err := unix.Bind(fd, sa); err != nil {
		t.Fatal(err)
	}
	if typ == unix.SOCK_STREAM {
		if err := unix.Listen(fd, 16); err != nil {
			t.Fatal(err)
		}
	}
	return fd
}

// tcpSocket is a TCP socket listening on 127.0.0.1:port (0: any free port).
func tcpSocket(t *testing.T, port int) (fd int, boundPort int) {
	fd = socket(t, unix.AF_INET, unix.SOCK_STREAM, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, sa.(*unix.SockaddrInet4).Port
}

func udpSocket(t *testing.T, port int) (fd int, boundPort int) {
	fd = socket(t, unix.AF_INET, unix.SOCK_DGRAM, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}})
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	return fd, sa.(*unix.SockaddrInet4).Port
}

// checkStream makes a connection to l and sends a line through it.
func checkStream(t *testing.T, l net.Listener) {
	t.Helper()
	c, err := net.Dial(l.Addr().Network(), l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("read %q, %v from accepted connection", buf, err)
	}
}

// checkPacket sends a datagram to p and reads it.
func checkPacket(t *testing.T, p net.PacketConn) {
	t.Helper()
	c, err := net.Dial(p.LocalAddr().Network(), p.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	p.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 16)
	n, _, err := p.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("read %q, %v from packet conn", buf[:n], err)
	}
}

func TestStreamsAndPackets(t *testing.T) {
	tcpFD, tcpPort := tcpSocket(t, 0)
	udpFD, udpPort := udpSocket(t, 0)
	path := filepath.Join(t.TempDir(), "app.sock")
	unixFD := socket(t, unix.AF_UNIX, unix.SOCK_STREAM, &unix.SockaddrUnix{Name: path})
	tcpKey := fmt.Sprintf("127.0.0.1:%d", tcpPort)
	t.Setenv("SERVER_STARTER_PORT", fmt.Sprintf("%s=%d;%d=%d;%s=%d;", tcpKey, tcpFD, udpPort, udpFD, path, unixFD))
	tcpIno, udpIno := inode(t, tcpFD), inode(t, udpFD)

	ls, err := listener.Streams()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		defer l.Close()
	}
	if len(ls) != 2 || ls[0].Addr().String() != tcpKey || ls[1].Addr().String() != path {
		t.Fatalf("Streams() = %v, want listeners on %s and %s", ls, tcpKey, path)
	}
	if isOpen(t, tcpFD, tcpIno) {
		t.Errorf("Streams() left inherited fd %d open", tcpFD)
	}
	if !isOpen(t, udpFD, udpIno) {
		t.Errorf("Streams() closed datagram fd %d", udpFD)
	}
	for _, l := range ls {
		checkStream(t, l)
	}

	ps, err := listener.Packets()
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].LocalAddr().String() != fmt.Sprintf("127.0.0.1:%d", udpPort) {
		t.Fatalf("Packets() = %v, want one on port %d", ps, udpPort)
	}
	defer ps[0].Close()
	checkPacket(t, ps[0])

	// Taken sockets cannot be taken again.
	if _, err := listener.Streams(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("stream socket %q (fd %d) was already taken", tcpKey, tcpFD)) {
		t.Errorf("second Streams() error = %v", err)
	}
	if _, err := listener.Packet(strconv.Itoa(udpPort)); err == nil || !strings.Contains(err.Error(), "already taken") {
		t.Errorf("Packet() after Packets() error = %v", err)
	}
}

func TestSharedKey(t *testing.T) {
	tcpFD, port := tcpSocket(t, 0)
	udpFD, _ := udpSocket(t, port)
	key := strconv.Itoa(port)
	t.Setenv("SERVER_STARTER_PORT", fmt.Sprintf("%s=%d;%s=%d", key, tcpFD, key, udpFD))

	p, err := listener.Packet(key)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	l, err := listener.Stream(key)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if l.Addr().Network() != "tcp" || p.LocalAddr().Network() != "udp" {
		t.Fatalf("Stream(%q) on %v, Packet(%q) on %v", key, l.Addr().Network(), key, p.LocalAddr().Network())
	}
	checkStream(t, l)
	checkPacket(t, p)
}

func TestStreamErrors(t *testing.T) {
	fd1, port1 := tcpSocket(t, 0)
	fd2, port2 := tcpSocket(t, 0)
	udpFD, _ := udpSocket(t, 0)
	a, b := fmt.Sprintf("a%d", port1), fmt.Sprintf("b%d", port2)
	t.Setenv("SERVER_STARTER_PORT", fmt.Sprintf("%s=%d;%s=%d;%s=%d", a, fd1, b, fd2, b, udpFD))

	_, err := listener.Stream("nope")
	if want := fmt.Sprintf(`no stream socket with key "nope": SERVER_STARTER_PORT has keys %q, %q`, a, b); err == nil || err.Error() != want {
		t.Errorf("Stream(missing) error = %v, want %s", err, want)
	}
	if _, err := listener.Packet(a); err == nil || !strings.Contains(err.Error(), "no datagram socket with key") {
		t.Errorf("Packet(stream key) error = %v", err)
	}
	l, err := listener.Stream(a)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := listener.Stream(a); err == nil || !strings.Contains(err.Error(), "already taken") {
		t.Errorf("second Stream() error = %v", err)
	}
	l2, err := listener.Stream(b)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	checkStream(t, l2)

	fd3, _ := tcpSocket(t, 0)
	fd4, port4 := tcpSocket(t, 0)
	c := fmt.Sprintf("c%d", port4)
	t.Setenv("SERVER_STARTER_PORT", fmt.Sprintf("%s=%d;%s=%d", c, fd3, c, fd4))
	if _, err := listener.Stream(c); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("several stream sockets with key %q (fds %d, %d)", c, fd3, fd4)) {
		t.Errorf("Stream(ambiguous key) error = %v", err)
	}

	t.Setenv("SERVER_STARTER_PORT", "")
	if ls, err := listener.Streams(); err != nil || len(ls) != 0 {
		t.Errorf("Streams() with empty SERVER_STARTER_PORT = %v, %v", ls, err)
	}
	if _, err := listener.Stream("x"); err == nil || !strings.Contains(err.Error(), "SERVER_STARTER_PORT is empty") {
		t.Errorf("Stream() with empty SERVER_STARTER_PORT error = %v", err)
	}
	t.Setenv("SERVER_STARTER_PORT", "x=3;y")
	if _, err := listener.Streams(); err == nil || !strings.Contains(err.Error(), `entry "y": missing '=FD'`) {
		t.Errorf("Streams() with malformed SERVER_STARTER_PORT error = %v", err)
	}
}

func TestNotSocket(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	tcpFD, port := tcpSocket(t, 0)
	tcpIno := inode(t, tcpFD)
	key := fmt.Sprintf("127.0.0.1:%d", port)
	pipeKey := "pipe" + key
	t.Setenv("SERVER_STARTER_PORT", fmt.Sprintf("%s=%d;%s=%d", key, tcpFD, pipeKey, w.Fd()))

	for name, f := range map[string]func() error{
		"Streams":     func() error { _, err := listener.Streams(); return err },
		"Packets":     func() error { _, err := listener.Packets(); return err },
		"Stream(key)": func() error { _, err := listener.Stream(pipeKey); return err },
	} {
		err := f()
		want := fmt.Sprintf("SERVER_STARTER_PORT entry \"%s=%d\": fd %d is not an open socket", pipeKey, w.Fd(), w.Fd())
		if err == nil || !strings.Contains(err.Error(), want) || !errors.Is(err, unix.ENOTSOCK) {
			t.Errorf("%s() error = %v, want %s: ENOTSOCK", name, err, want)
		}
	}
	// The failures closed nothing: the pipe works and the socket can still be taken.
	if _, err := w.Write([]byte("x")); err != nil {
		t.Errorf("pipe closed: %v", err)
	}
	if !isOpen(t, tcpFD, tcpIno) {
		t.Fatalf("failed Streams() closed fd %d", tcpFD)
	}
	l, err := listener.Stream(key)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	checkStream(t, l)

	t.Setenv("SERVER_STARTER_PORT", "closed=987654")
	if _, err := listener.Streams(); err == nil || !errors.Is(err, unix.EBADF) || !strings.Contains(err.Error(), `"closed=987654": fd 987654 is not an open socket`) {
		t.Errorf("Streams() with closed fd error = %v", err)
	}
}

func TestNotSet(t *testing.T) {
	t.Setenv("SERVER_STARTER_PORT", "")
	os.Unsetenv("SERVER_STARTER_PORT")
	if _, err := listener.Sockets(); !errors.Is(err, listener.ErrNotSet) {
		t.Errorf("Sockets() error = %v, want ErrNotSet", err)
	}
	if _, err := listener.Streams(); !errors.Is(err, listener.ErrNotSet) {
		t.Errorf("Streams() error = %v, want ErrNotSet", err)
	}
	if _, err := listener.Packets(); !errors.Is(err, listener.ErrNotSet) {
		t.Errorf("Packets() error = %v, want ErrNotSet", err)
	}
	if _, err := listener.Stream("8080"); !errors.Is(err, listener.ErrNotSet) {
		t.Errorf("Stream() error = %v, want ErrNotSet", err)
	}
	if _, err := listener.Packet("8080"); !errors.Is(err, listener.ErrNotSet) {
		t.Errorf("Packet() error = %v, want ErrNotSet", err)
	}
	t.Setenv("SERVER_STARTER_PORT", "")
	if socks, err := listener.Sockets(); err != nil || len(socks) != 0 {
		t.Errorf("Sockets() with empty value = %v, %v", socks, err)
	}
}

func TestNotify(t *testing.T) {
	for _, name := range []string{
		filepath.Join(t.TempDir(), "notify"),
		fmt.Sprintf("@ss-bridge-listener-test-%d-%d", os.Getpid(), time.Now().UnixNano()),
	} {
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		t.Setenv("NOTIFY_SOCKET", name)
		read := func() string {
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, 256)
			n, err := c.Read(buf)
			if err != nil {
				t.Fatal(err)
			}
			return string(buf[:n])
		}
		if err := listener.Ready(); err != nil {
			t.Fatal(err)
		}
		if got := read(); got != "READY=1" {
			t.Errorf("%s: Ready() sent %q", name, got)
		}
		if err := listener.Status("serving\ngeneration 2\r\nok\r"); err != nil {
			t.Fatal(err)
		}
		if got := read(); got != "STATUS=serving generation 2 ok " {
			t.Errorf("%s: Status() sent %q", name, got)
		}
	}

	missing := filepath.Join(t.TempDir(), "missing")
	t.Setenv("NOTIFY_SOCKET", missing)
	if err := listener.Ready(); err == nil || !strings.HasPrefix(err.Error(), "notify READY=1 to "+missing+": ") || !errors.Is(err, unix.ENOENT) {
		t.Errorf("Ready() to missing socket error = %v", err)
	}

	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	if err := listener.Ready(); err != nil {
		t.Errorf("Ready() without NOTIFY_SOCKET = %v", err)
	}
	if err := listener.Status("x"); err != nil {
		t.Errorf("Status() without NOTIFY_SOCKET = %v", err)
	}
}
