package notify

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// serviceManager is the receiving end of NOTIFY_SOCKET, as systemd has it.
type serviceManager struct {
	t    *testing.T
	conn *net.UnixConn
}

func listenAsServiceManager(t *testing.T, addr string) *serviceManager {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", addr)
	return &serviceManager{t, conn}
}

// receive returns the next datagram and the descriptors that came with it.
func (s *serviceManager) receive() (string, []int) {
	s.t.Helper()
	buf := make([]byte, 8192)
	oob := make([]byte, unix.CmsgSpace(16*4))
	s.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		s.t.Fatal(err)
	}
	var fds []int
	cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil {
		s.t.Fatal(err)
	}
	for i := range cmsgs {
		got, err := unix.ParseUnixRights(&cmsgs[i])
		if err != nil {
			s.t.Fatal(err)
		}
		fds = append(fds, got...)
	}
	return string(buf[:n]), fds
}

func fromEnv(t *testing.T) *Manager {
	t.Helper()
	m, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestManagerSendsOneDatagramPerCall(t *testing.T) {
	sm := listenAsServiceManager(t, filepath.Join(t.TempDir(), "notify"))
	m := fromEnv(t)
	for _, tc := range []struct {
		send func() error
		want string
	}{
		{m.Ready, "READY=1"},
		{m.Stopping, "STOPPING=1"},
		{m.Watchdog, "WATCHDOG=1"},
		{func() error { return m.Status("serving\ngeneration 2\r\n") }, "STATUS=serving generation 2 "},
		{func() error { return m.ExtendTimeout(1500 * time.Millisecond) }, "EXTEND_TIMEOUT_USEC=1500000"},
		{func() error { return m.ExtendTimeout(-time.Second) }, "EXTEND_TIMEOUT_USEC=0"},
		{func() error { return m.MainPID(1234) }, "MAINPID=1234"},
		{func() error { return m.Send("READY=1", "STATUS=up") }, "READY=1\nSTATUS=up"},
		{func() error { return m.Send("RELOADING=1", "MONOTONIC_USEC=7") }, "RELOADING=1\nMONOTONIC_USEC=7"},
		{func() error { return m.RemoveFDs("127.0.0.1:80") }, "FDSTOREREMOVE=1\nFDNAME=127.0.0.1_3A80"},
	} {
		if err := tc.send(); err != nil {
			t.Fatal(err)
		}
		if got, _ := sm.receive(); got != tc.want {
			t.Errorf("sent %q, want %q", got, tc.want)
		}
	}
}

func TestReloadingCarriesTheMonotonicClock(t *testing.T) {
	sm := listenAsServiceManager(t, filepath.Join(t.TempDir(), "notify"))
	m := fromEnv(t)
	for _, send := range []func() error{m.Reloading, func() error { return m.Send("RELOADING=1", "STATUS=reloading") }} {
		before := monotonicUsec()
		if err := send(); err != nil {
			t.Fatal(err)
		}
		after := monotonicUsec()
		got, _ := sm.receive()
		lines := strings.Split(got, "\n")
		if lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[len(lines)-1], "MONOTONIC_USEC=") {
			t.Fatalf("sent %q", got)
		}
		usec, err := strconv.ParseUint(strings.TrimPrefix(lines[len(lines)-1], "MONOTONIC_USEC="), 10, 64)
		if err != nil || usec < before || usec > after {
			t.Fatalf("MONOTONIC_USEC %d not within [%d, %d]: %v", usec, before, after, err)
		}
	}
}

func TestManagerReachesAnAbstractSocket(t *testing.T) {
	sm := listenAsServiceManager(t, "@ss-bridge-notify-test-"+strconv.Itoa(os.Getpid()))
	if err := fromEnv(t).Ready(); err != nil {
		t.Fatal(err)
	}
	if got, _ := sm.receive(); got != "READY=1" {
		t.Fatalf("sent %q", got)
	}
}

func TestStoreFDsPassesTheDescriptors(t *testing.T) {
	sm := listenAsServiceManager(t, filepath.Join(t.TempDir(), "notify"))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := fromEnv(t).StoreFDs(l.Addr().String(), int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	got, fds := sm.receive()
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	if want := "FDSTORE=1\nFDNAME=" + EncodeFDName(l.Addr().String()); got != want {
		t.Errorf("sent %q, want %q", got, want)
	}
	if len(fds) != 1 {
		t.Fatalf("received %d descriptors, want 1", len(fds))
	}
	var a, b unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(fds[0], &b); err != nil {
		t.Fatal(err)
	}
	if a.Ino != b.Ino || a.Dev != b.Dev {
		t.Error("the received descriptor is another socket")
	}
	if err := fromEnv(t).StoreFDs("x"); err == nil {
		t.Error("StoreFDs without descriptors succeeded")
	}
}

func TestSendRefusesWhatWouldBreakTheDatagram(t *testing.T) {
	listenAsServiceManager(t, filepath.Join(t.TempDir(), "notify"))
	m := fromEnv(t)
	for _, bad := range [][]string{{}, {"READY"}, {"=1"}, {"STATUS=a\nREADY=1"}, {"READY=1", "STATUS=\x00"}} {
		if err := m.Send(bad...); err == nil {
			t.Errorf("Send(%q) succeeded", bad)
		}
	}
}

func TestSendReportsAnAbsentServiceManager(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nobody")
	t.Setenv("NOTIFY_SOCKET", path)
	err := fromEnv(t).Ready()
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("got %v, want an error naming %s", err, path)
	}
}

func TestWithoutNotifySocketNothingIsSent(t *testing.T) {
	for _, value := range []string{"unset", ""} {
		if value == "unset" {
			t.Setenv("NOTIFY_SOCKET", "")
			os.Unsetenv("NOTIFY_SOCKET")
		} else {
			t.Setenv("NOTIFY_SOCKET", value)
		}
		t.Setenv("WATCHDOG_USEC", "1000000")
		for _, m := range []*Manager{fromEnv(t), nil} {
			if err := m.Ready(); err != nil {
				t.Error(err)
			}
			if err := m.StoreFDs("8080", 0); err != nil {
				t.Error(err)
			}
			if err := m.Send(); err != nil {
				t.Error(err)
			}
			if _, ok := m.WatchdogInterval(); ok {
				t.Error("a watchdog without a service manager")
			}
		}
	}
}

func TestFromEnvRejectsMalformedValues(t *testing.T) {
	for _, value := range []string{"relative/path", "@", "vsock:2:1234", "/" + strings.Repeat("x", 107)} {
		t.Setenv("NOTIFY_SOCKET", value)
		if m, err := FromEnv(); err == nil {
			t.Errorf("NOTIFY_SOCKET=%q gave %+v", value, m)
		}
	}
}

func TestWatchdogInterval(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	me := strconv.Itoa(os.Getpid())
	for _, tc := range []struct {
		usec, pid string // "-" is unset
		want      time.Duration
		ok, err   bool
	}{
		{"-", "-", 0, false, false},
		{"2000000", "-", time.Second, true, false},
		{"2000000", me, time.Second, true, false},
		{"2000000", "1", 0, false, false},
		{"0", "-", 0, false, true},
		{"x", "-", 0, false, true},
		{"2000000", "x", 0, false, true},
	} {
		set := func(k, v string) {
			t.Setenv(k, "")
			if v == "-" {
				os.Unsetenv(k)
			} else {
				os.Setenv(k, v)
			}
		}
		set("WATCHDOG_USEC", tc.usec)
		set("WATCHDOG_PID", tc.pid)
		m, err := FromEnv()
		if (err != nil) != tc.err {
			t.Errorf("WATCHDOG_USEC=%s WATCHDOG_PID=%s: error %v", tc.usec, tc.pid, err)
			continue
		}
		if got, ok := m.WatchdogInterval(); got != tc.want || ok != tc.ok {
			t.Errorf("WATCHDOG_USEC=%s WATCHDOG_PID=%s: WatchdogInterval() = %v, %v; want %v, %v", tc.usec, tc.pid, got, ok, tc.want, tc.ok)
		}
	}
}
