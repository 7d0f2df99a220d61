package main

import (
	"fmt"
	"github.com/ss-bridge/ss-bridge/internal/proc"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// checkWorkerSockets checks that the worker's descriptors named in a SERVER_STARTER_PORT
// value are sockets.
func checkWorkerSockets(t *testing.T, pid int, portEnv string) {
	t.Helper()
	fds, err := fdTargets(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, entry := range strings.Split(portEnv, ";") {
		i := strings.LastIndexByte(entry, '=')
		fd, err := strconv.Atoi(entry[i+1:])
		if err != nil {
			t.Fatalf("bad entry %q", entry)
		}
		if !strings.HasPrefix(fds[fd], "socket:") {
			t.Errorf("worker %d: fd %d (entry %q) is %q, want a socket", pid, fd, entry, fds[fd])
		}
	}
}

func TestEnvFormat(t *testing.T) {
	t.Parallel()
	v6 := hasIPv6Loopback()
	run := func(t *testing.T, dir string, opts []string, want string) {
		t.Helper()
		b := startBridge(t, cmdArgs(append([]string{"--interval=0"}, opts...), envDumpWorker(dir))...)
		env := readEnvDump(t, dir, 1, 5*time.Second)
		if got := env["SERVER_STARTER_PORT"]; got != want {
			t.Errorf("%q: SERVER_STARTER_PORT=%q, want %q", opts, got, want)
		}
		if got := env["SERVER_STARTER_GENERATION"]; got != "1" {
			t.Errorf("%q: SERVER_STARTER_GENERATION=%q, want \"1\"", opts, got)
		}
		w := b.worker(1, time.Second)
		waitExec(t, w, "sleep", 5*time.Second)
		checkWorkerSockets(t, w, want)
	}

	t.Run("port", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		p := freePort(t)
		run(t, dir, []string{fmt.Sprintf("--port=%d", p)}, fmt.Sprintf("%d=3", p))
	})
	t.Run("host-port", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		p := freePort(t)
		run(t, dir, []string{fmt.Sprintf("--port=127.0.0.1:%d", p)}, fmt.Sprintf("127.0.0.1:%d=3", p))
	})
	t.Run("ipv6", func(t *testing.T) {
		t.Parallel()
		if !v6 {
			t.Skip("no IPv6 loopback")
		}
		dir := t.TempDir()
		p := freePort(t)
		run(t, dir, []string{fmt.Sprintf("--port=[::1]:%d", p)}, fmt.Sprintf("[::1]:%d=3", p))
	})
	t.Run("path", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		sock := filepath.Join(dir, "s.sock")
		run(t, dir, []string{"--path=" + sock}, sock+"=3")
	})
	t.Run("combined", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		sock := filepath.Join(dir, "s.sock")
		p1, p2, p3 := freePort(t), freePort(t), freePort(t)
		// --path first: ports are numbered before paths whatever the order of the options.
		opts := []string{"--path=" + sock, fmt.Sprintf("--port=%d", p1), fmt.Sprintf("--port=127.0.0.1:%d", p2)}
		want := fmt.Sprintf("%d=3;127.0.0.1:%d=4;", p1, p2)
		fd := 5
		if v6 {
			opts = append(opts, fmt.Sprintf("--port=[::1]:%d", p3))
			want += fmt.Sprintf("[::1]:%d=5;", p3)
			fd = 6
		}
		want += fmt.Sprintf("%s=%d", sock, fd)
		run(t, dir, opts, want)
	})
	t.Run("go-worker", func(t *testing.T) {
		t.Parallel()
		p := freePort(t)
		addr := fmt.Sprintf("127.0.0.1:%d", p)
		startBridge(t, cmdArgs([]string{"--interval=0", "--port=" + addr}, goWorker())...)
		waitServing(t, addr, 1, 5*time.Second)
		env := getEnvHTTP(t, addr)
		if got, want := env["SERVER_STARTER_PORT"], addr+"=3"; got != want {
			t.Errorf("SERVER_STARTER_PORT=%q, want %q", got, want)
		}
		if got := env["SERVER_STARTER_GENERATION"]; got != "1" {
			t.Errorf("SERVER_STARTER_GENERATION=%q, want 1", got)
		}
	})
}

// A worker that fails twice and then succeeds is generation 3.
func TestGenerationCountsFailedStarts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	status := filepath.Join(dir, "status")
	counter := filepath.Join(dir, "count")
	script := `n=$(cat '` + counter + `' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '` + counter + `'; ` +
		`if [ $n -le 2 ]; then exit 1; fi; ` + envDumpWorker(dir)[2]
	b := startBridge(t, cmdArgs([]string{"--interval=0.3", "--max-backoff=0.5", "--status-file=" + status},
		[]string{"sh", "-c", script})...)
	env := readEnvDump(t, dir, 3, 10*time.Second)
	if got := env["SERVER_STARTER_GENERATION"]; got != "3" {
		t.Errorf("SERVER_STARTER_GENERATION=%q, want 3", got)
	}
	w1, w2, w3 := b.worker(1, time.Second), b.worker(2, time.Second), b.worker(3, time.Second)
	b.expectSequence(
		fmt.Sprintf(`^starting new worker %d$`, w1),
		fmt.Sprintf(`^new worker %d seems to have failed to start, exit status:256$`, w1),
		fmt.Sprintf(`^starting new worker %d$`, w2),
		fmt.Sprintf(`^new worker %d seems to have failed to start, exit status:256$`, w2),
		fmt.Sprintf(`^starting new worker %d$`, w3),
	)
	waitStatus(t, status, statusLine(3, w3), 3*time.Second)
	for _, gen := range []int{1, 2} {
		if fileExists(filepath.Join(dir, fmt.Sprintf("env.%d", gen))) {
			t.Errorf("generation %d should have failed before writing its environment", gen)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if n := b.count(`^starting new worker `); n != 3 {
		t.Errorf("%d workers started, want 3", n)
	}
}

// --port=P=5 passes the socket on descriptor 5.
func TestFDPinning(t *testing.T) {
	t.Parallel()
	t.Run("fds", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		p := freePort(t)
		b := startBridge(t, cmdArgs([]string{"--interval=0", fmt.Sprintf("--port=%d=5", p)}, envDumpWorker(dir))...)
		env := readEnvDump(t, dir, 1, 5*time.Second)
		if got, want := env["SERVER_STARTER_PORT"], fmt.Sprintf("%d=5", p); got != want {
			t.Errorf("SERVER_STARTER_PORT=%q, want %q", got, want)
		}
		w := b.worker(1, time.Second)
		waitAsleep(t, w, 5*time.Second)
		fds, _ := fdTargets(w)
		if got := sortedKeys(fds); !slices.Equal(got, []int{0, 1, 2, 5}) {
			t.Errorf("worker fds %v (%v), want [0 1 2 5]", got, fds)
		}
		if !strings.HasPrefix(fds[5], "socket:") {
			t.Errorf("worker fd 5 is %q, want a socket", fds[5])
		}
	})
	t.Run("serves", func(t *testing.T) {
		t.Parallel()
		p := freePort(t)
		startBridge(t, cmdArgs([]string{"--interval=0", fmt.Sprintf("--port=127.0.0.1:%d=5", p)}, goWorker())...)
		addr := fmt.Sprintf("127.0.0.1:%d", p)
		waitServing(t, addr, 1, 5*time.Second)
		if got, want := getEnvHTTP(t, addr)["SERVER_STARTER_PORT"], addr+"=5"; got != want {
			t.Errorf("SERVER_STARTER_PORT=%q, want %q", got, want)
		}
	})
}

func sortedKeys(m map[int]string) []int {
	var keys []int
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	return keys
}

func udpEcho(t *testing.T, addr, msg string) string {
	t.Helper()
	c, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1024)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := c.Write([]byte(msg)); err != nil {
			time.Sleep(50 * time.Millisecond) // ECONNREFUSED from an earlier datagram
			continue
		}
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n])
		}
	}
	t.Fatalf("no UDP echo from %s", addr)
	return ""
}

func TestUDP(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, spec, key, host string }{
		{"port", "u%d", "%d", "127.0.0.1"},
		{"host-port", "127.0.0.1:u%d", "127.0.0.1:%d", "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tp, up := freePort(t), freeUDPPort(t)
			httpAddr := fmt.Sprintf("127.0.0.1:%d", tp)
			b := startBridge(t, cmdArgs([]string{"--interval=0", "--port=" + httpAddr, "--port=" + fmt.Sprintf(tc.spec, up)}, goWorker())...)
			waitServing(t, httpAddr, 1, 5*time.Second)
			w := b.worker(1, time.Second)
			want := fmt.Sprintf("%s=3;%s=4", httpAddr, fmt.Sprintf(tc.key, up))
			if got := getEnvHTTP(t, httpAddr)["SERVER_STARTER_PORT"]; got != want {
				t.Errorf("SERVER_STARTER_PORT=%q, want %q", got, want)
			}
			if got, want := udpEcho(t, fmt.Sprintf("%s:%d", tc.host, up), "hello"), fmt.Sprintf("pid=%d hello", w); got != want {
				t.Errorf("UDP echo %q, want %q", got, want)
			}
		})
	}
}

// The worker gets 0, 1, 2 and its sockets and nothing else (not the pid, status or log
// file, nor anything of the bridge's).
func TestNoExtraFDs(t *testing.T) {
	t.Parallel()
	t.Run("own-files", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		p := freePort(t)
		startBridge(t, cmdArgs([]string{
			"--interval=0", fmt.Sprintf("--port=127.0.0.1:%d", p), "--path=" + filepath.Join(dir, "s.sock"),
			"--pid-file=" + filepath.Join(dir, "pid"), "--status-file=" + filepath.Join(dir, "status"),
			"--log-file=" + filepath.Join(dir, "log"),
		}, []string{"sleep", "1000"})...)
		// the log goes to the file: find the worker there
		content := waitFileContains(t, filepath.Join(dir, "log"), 5*time.Second, "starting new worker ")
		m := re(`starting new worker (\d+)`).FindStringSubmatch(content)
		w, _ := strconv.Atoi(m[1])
		waitAsleep(t, w, 5*time.Second)
		checkOnlyFDs(t, w, 3, 4)
	})
	t.Run("inherited-by-bridge", func(t *testing.T) {
		// The README: "The worker inherits no other descriptor than stdin, stdout, stderr
		// and its sockets" - also not one the bridge itself inherited without O_CLOEXEC.
		t.Parallel()
		p := freePort(t)
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		defer w.Close()
		b := startBridgeWith(t, bridgeConfig{extraFiles: []*os.File{r, w}}, cmdArgs([]string{
			"--interval=0", fmt.Sprintf("--port=127.0.0.1:%d", p),
		}, []string{"sleep", "1000"})...)
		wp := b.worker(1, 5*time.Second)
		waitAsleep(t, wp, 5*time.Second)
		checkOnlyFDs(t, wp, 3)
	})
}

func checkOnlyFDs(t *testing.T, pid int, sockets ...int) {
	t.Helper()
	fds, err := fdTargets(pid)
	if err != nil {
		t.Fatal(err)
	}
	want := append([]int{0, 1, 2}, sockets...)
	if got := sortedKeys(fds); !slices.Equal(got, want) {
		t.Errorf("worker %d has fds %v (%v), want %v", pid, got, fds, want)
	}
	for _, fd := range sockets {
		if !strings.HasPrefix(fds[fd], "socket:") {
			t.Errorf("worker fd %d is %q, want a socket", fd, fds[fd])
		}
	}
}

// The bridge must not clear O_NONBLOCK on the shared socket (as (*os.File).Fd() would)
// when it starts a new worker: the old Go worker would block in accept(2) and never exit.
func TestNonblockPreserved(t *testing.T) {
	t.Parallel()
	p := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	// The start delay leaves time to look at the flags after the bridge has started
	// the new worker but before that worker touches the socket.
	b := startBridge(t, cmdArgs([]string{"--interval=0", "--port=" + addr}, goWorker("-start-delay", "1s"))...)
	w1 := waitServing(t, addr, 1, 5*time.Second)
	inode, err := listenInode(p)
	if err != nil {
		t.Fatal(err)
	}
	fds, err := fdTargets(b.pid)
	if err != nil {
		t.Fatal(err)
	}
	sockFD := -1
	for fd, target := range fds {
		if target == "socket:["+inode+"]" {
			sockFD = fd
		}
	}
	if sockFD < 0 {
		t.Fatalf("bridge holds no fd for the listening socket (inode %s): %v", inode, fds)
	}
	const oNonblock = 04000
	flags, err := fdFlags(b.pid, sockFD)
	if err != nil {
		t.Fatal(err)
	}
	if flags&oNonblock == 0 {
		t.Fatalf("socket flags %#o lack O_NONBLOCK although the Go worker serves on it", flags)
	}
	b.signal(syscall.SIGHUP)
	b.worker(2, 5*time.Second)
	time.Sleep(100 * time.Millisecond) // the new worker is still in its start delay
	flags, err = fdFlags(b.pid, sockFD)
	if err != nil {
		t.Fatal(err)
	}
	if flags&oNonblock == 0 {
		t.Errorf("after starting worker 2 the shared socket's flags are %#o: O_NONBLOCK was cleared", flags)
	}
	sig := b.waitLine(3*time.Second, fmt.Sprintf(`^worker %d got TERM$`, w1), 1)
	if !proc.WaitDead(w1, 2*time.Second) {
		t.Fatalf("old worker %d still alive 2s after its TERM (stuck in accept?)", w1)
	}
	died := b.waitLine(2*time.Second, fmt.Sprintf(`^old worker %d died, status:0$`, w1), 1)
	if d := died.at.Sub(sig.at); d > time.Second {
		t.Errorf("old worker took %v to exit after TERM", d)
	}
	waitServing(t, addr, 2, 5*time.Second)
}
