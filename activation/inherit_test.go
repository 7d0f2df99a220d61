package activation

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// inheritResult is what TestHelperInherit reports of Inherit in a child.
type inheritResult struct {
	Sockets []inheritedSocket
	Err     string
	// EnvKept is true when LISTEN_FDS and LISTEN_PID were still set after.
	EnvKept bool
}

type inheritedSocket struct {
	Spec
	FD      int
	Name    string
	CloExec bool
}

const inheritResultPrefix = "INHERIT RESULT "

// TestHelperInherit is the child of the Inherit tests, run with sockets on
// descriptors 3 and up and LISTEN_FDS set; it claims them with LISTEN_PID,
// which only it can know, and prints what Inherit returned.
func TestHelperInherit(t *testing.T) {
	if os.Getenv("INHERIT_HELPER") != "1" {
		t.Skip("run by the Inherit tests")
	}
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	var res inheritResult
	socks, err := Inherit()
	if err != nil {
		res.Err = err.Error()
	}
	for _, s := range socks {
		flags, err := unix.FcntlInt(uintptr(s.FD), unix.F_GETFD, 0)
		if err != nil {
			t.Fatal(err)
		}
		res.Sockets = append(res.Sockets, inheritedSocket{s.Spec, s.FD, s.Name, flags&unix.FD_CLOEXEC != 0})
	}
	_, fdsKept := os.LookupEnv("LISTEN_FDS")
	_, pidKept := os.LookupEnv("LISTEN_PID")
	res.EnvKept = fdsKept && pidKept
	out, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	os.Stdout.Write(append([]byte(inheritResultPrefix), append(out, '\n')...))
}

// inheritInChild runs TestHelperInherit with files on descriptors 3 and up.
func inheritInChild(t *testing.T, files []*os.File, names string) inheritResult {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperInherit$", "-test.count=1")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LISTEN_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "INHERIT_HELPER=1", "LISTEN_FDS="+strconv.Itoa(len(files)))
	if names != "-" {
		cmd.Env = append(cmd.Env, "LISTEN_FDNAMES="+names)
	}
	cmd.ExtraFiles = files
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("helper: %v\n%s%s", err, out, stderr.Bytes())
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), inheritResultPrefix); ok {
			var res inheritResult
			if err := json.Unmarshal([]byte(line), &res); err != nil {
				t.Fatal(err)
			}
			return res
		}
	}
	t.Fatalf("helper printed no result:\n%s", out)
	panic("unreachable")
}

// file returns a duplicate of a socket's descriptor, for ExtraFiles.
func file(t *testing.T, c interface {
	File() (*os.File, error)
}) *os.File {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func listenTCP(t *testing.T, network, addr string) *net.TCPListener {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener)
}

func ipv6Loopback() bool {
	l, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	l.Close()
	return true
}

func TestInheritDescribesEachSocketAsItsSpec(t *testing.T) {
	type want struct {
		spec Spec
		name string
	}
	var files []*os.File
	var wants []want
	add := func(f *os.File, spec Spec, name string) {
		files = append(files, f)
		wants = append(wants, want{spec, name})
	}
	port := func(l net.Listener) int { return l.Addr().(*net.TCPAddr).Port }

	loopback := listenTCP(t, "tcp4", "127.0.0.1:0")
	add(file(t, loopback), mustSpec(t, "127.0.0.1:"+strconv.Itoa(port(loopback))), "web")
	any4 := listenTCP(t, "tcp4", "0.0.0.0:0")
	add(file(t, any4), mustSpec(t, strconv.Itoa(port(any4))), "")

	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	add(file(t, udp), mustSpec(t, "127.0.0.1:u"+strconv.Itoa(udp.LocalAddr().(*net.UDPAddr).Port)), "dns")

	path := filepath.Join(t.TempDir(), "app.sock")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	pathSpec, err := ParsePath(path)
	if err != nil {
		t.Fatal(err)
	}
	add(file(t, ul), pathSpec, "127.0.0.1_3A8080")

	abstract := "@ss-bridge-inherit-test-" + strconv.Itoa(os.Getpid())
	al, err := net.ListenUnix("unix", &net.UnixAddr{Name: abstract, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer al.Close()
	abstractSpec, err := ParsePath(abstract)
	if err != nil {
		t.Fatal(err)
	}
	add(file(t, al), abstractSpec, "stored")

	if ipv6Loopback() {
		v6 := listenTCP(t, "tcp6", "[::1]:0")
		add(file(t, v6), mustSpec(t, "[::1]:"+strconv.Itoa(port(v6))), "v6")
		any6 := listenTCP(t, "tcp6", "[::]:0")
		add(file(t, any6), mustSpec(t, "[::]:"+strconv.Itoa(port(any6))), "any v6")
	} else {
		t.Log("no IPv6 loopback; IPv6 sockets not tested")
	}

	var names []string
	for _, w := range wants {
		names = append(names, w.name)
	}
	res := inheritInChild(t, files, strings.Join(names, ":"))
	if res.Err != "" {
		t.Fatal(res.Err)
	}
	if len(res.Sockets) != len(wants) {
		t.Fatalf("got %d sockets, want %d: %+v", len(res.Sockets), len(wants), res.Sockets)
	}
	for i, got := range res.Sockets {
		w := wants[i]
		if got.Spec != w.spec || got.Name != w.name || got.FD != 3+i || !got.CloExec {
			t.Errorf("descriptor %d: got %+v, want %+v named %q, close-on-exec", 3+i, got, w.spec, w.name)
		}
	}
	if !res.EnvKept {
		t.Error("Inherit removed LISTEN_FDS or LISTEN_PID")
	}

	// Without LISTEN_FDNAMES the names are empty.
	res = inheritInChild(t, files[:1], "-")
	if res.Err != "" || len(res.Sockets) != 1 || res.Sockets[0].Name != "" || res.Sockets[0].Key != wants[0].spec.Key {
		t.Errorf("without LISTEN_FDNAMES: %+v", res)
	}
}

func TestInheritRefusesWhatIsNoListeningSocket(t *testing.T) {
	l := listenTCP(t, "tcp4", "127.0.0.1:0")
	conn, err := net.Dial("tcp4", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	ug, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "dgram"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer ug.Close()

	for _, tc := range []struct {
		what string
		file *os.File
		want string
	}{
		{"a connection", file(t, conn.(*net.TCPConn)), "not a listening socket"},
		{"a pipe", r, "not a socket"},
		{"a unix datagram socket", file(t, ug), "unix datagram socket"},
	} {
		res := inheritInChild(t, []*os.File{file(t, l), tc.file}, "ok:bad")
		if !strings.Contains(res.Err, tc.want) || !strings.Contains(res.Err, "descriptor 4 (bad)") || res.Sockets != nil {
			t.Errorf("%s: got %+v, want an error about descriptor 4 (bad) saying %q", tc.what, res, tc.want)
		}
	}
}

func TestInheritRefusesMalformedEnvironment(t *testing.T) {
	me := strconv.Itoa(os.Getpid())
	for _, env := range [][3]string{ // LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES; "-" is unset
		{"x", me, "-"},
		{"", me, "-"},
		{"-1", me, "-"},
		{"99999999999999999999", me, "-"},
		{"1", "x", "-"},
		{"1", "0", "-"},
		{"1", "", "-"},
		{"2", me, "a"},
		{"1", me, "a:b"},
		{"0", me, "a"},
	} {
		setListenEnv(t, env)
		if socks, err := Inherit(); err == nil {
			t.Errorf("LISTEN_FDS=%q LISTEN_PID=%q LISTEN_FDNAMES=%q: got %+v, want an error", env[0], env[1], env[2], socks)
		}
	}
}

func TestInheritWithoutActivationReturnsNothing(t *testing.T) {
	me := strconv.Itoa(os.Getpid())
	for _, env := range [][3]string{
		{"-", "-", "-"},
		{"-", me, "-"},
		{"2", "-", "-"},
		{"2", "1", "a:b"}, // another process's
		{"0", me, "-"},
		{"0", me, ""},
	} {
		setListenEnv(t, env)
		if socks, err := Inherit(); socks != nil || err != nil {
			t.Errorf("LISTEN_FDS=%q LISTEN_PID=%q LISTEN_FDNAMES=%q: got %+v, %v", env[0], env[1], env[2], socks, err)
		}
	}
}

func setListenEnv(t *testing.T, env [3]string) {
	t.Helper()
	for i, name := range []string{"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"} {
		t.Setenv(name, "")
		if env[i] == "-" {
			os.Unsetenv(name)
		} else {
			os.Setenv(name, env[i])
		}
	}
}
