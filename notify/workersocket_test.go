package notify

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the worker. With HELPER=send it sends
// HELPER_MESSAGE to $NOTIFY_SOCKET (and, with HELPER_FD, descriptor 3 along
// with it, which it then closes), prints its pid, and waits for stdin to
// close. With HELPER=spawn it runs a HELPER=send child of its own, so the
// sender is the worker's grandchild.
func TestMain(m *testing.M) {
	switch os.Getenv("HELPER") {
	case "":
		os.Exit(m.Run())
	case "send":
		helperSend()
	case "spawn":
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "HELPER=send")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "helper:", err)
			os.Exit(1)
		}
	}
	os.Exit(0)
}

func helperSend() {
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	m, err := FromEnv()
	if err != nil {
		fail(err)
	}
	if os.Getenv("HELPER_FD") != "" {
		if err := m.StoreFDs("pipe", 3); err != nil {
			fail(err)
		}
		unix.Close(3)
	} else if err := m.Send(strings.Split(os.Getenv("HELPER_MESSAGE"), "\n")...); err != nil {
		fail(err)
	}
	fmt.Println(os.Getpid())
	io.Copy(io.Discard, os.Stdin)
}

// worker is a helper process started with a WorkerSocket as NOTIFY_SOCKET.
type worker struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	// sender is the pid of the process that sent, once it has sent.
	sender int
}

func startWorker(t *testing.T, ws *WorkerSocket, mode string, extraEnv []string, extraFiles ...*os.File) *worker {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "HELPER="+mode, "NOTIFY_SOCKET="+ws.Path())
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.ExtraFiles = extraFiles
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &worker{cmd: cmd, stdin: stdin}
	t.Cleanup(w.stop)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("helper: %v", err)
	}
	if w.sender, err = strconv.Atoi(strings.TrimSpace(line)); err != nil {
		t.Fatalf("helper printed %q", line)
	}
	return w
}

func (w *worker) stop() {
	w.stdin.Close()
	w.cmd.Wait()
}

func listen(t *testing.T) *WorkerSocket {
	t.Helper()
	ws, err := Listen(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ws.Close() })
	return ws
}

func next(t *testing.T, ws *WorkerSocket) Message {
	t.Helper()
	select {
	case m, ok := <-ws.Messages():
		if !ok {
			t.Fatal("Messages closed")
		}
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
	}
	panic("unreachable")
}

func TestWorkerSocketAcceptsTheWorker(t *testing.T) {
	ws := listen(t)
	var dropped []error
	ws.Dropped = func(err error) { dropped = append(dropped, err) }
	w := startWorker(t, ws, "send", []string{"HELPER_MESSAGE=READY=1\nSTATUS=hi\nX_CUSTOM=a=b"})
	// The worker has sent before it is named: the datagram waits for Watch.
	ws.Watch(w.cmd.Process.Pid)
	m := next(t, ws)
	if m.PID != w.cmd.Process.Pid || !m.Ready || m.Stopping || m.Watchdog || m.Status != "hi" || m.Fields["X_CUSTOM"] != "a=b" {
		t.Fatalf("got %+v from worker %d", m, w.cmd.Process.Pid)
	}
	w.stop()
	if err := ws.Close(); err != nil {
		t.Fatal(err)
	}
	if len(dropped) > 0 {
		t.Fatalf("dropped %v", dropped)
	}
}

func TestWorkerSocketAcceptsADescendant(t *testing.T) {
	ws := listen(t)
	w := startWorker(t, ws, "spawn", []string{"HELPER_MESSAGE=STOPPING=1\nWATCHDOG=1"})
	ws.Watch(w.cmd.Process.Pid)
	m := next(t, ws)
	if m.PID != w.sender || m.PID == w.cmd.Process.Pid || !m.Stopping || !m.Watchdog || m.Ready {
		t.Fatalf("got %+v; worker %d, its child %d", m, w.cmd.Process.Pid, w.sender)
	}
}

func TestWorkerSocketDropsOthers(t *testing.T) {
	ws := listen(t)
	dropped := make(chan error, 10)
	ws.Dropped = func(err error) { dropped <- err }
	// A worker that has sent nothing; the test process, its parent, sends.
	w := startWorker(t, ws, "send", []string{"HELPER_MESSAGE=X=1"})
	ws.Watch(w.cmd.Process.Pid)
	if m := next(t, ws); m.Fields["X"] != "1" {
		t.Fatalf("got %+v", m)
	}

	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	before := openFDs(t)
	t.Setenv("NOTIFY_SOCKET", ws.Path())
	m, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Ready(); err != nil {
		t.Fatal(err)
	}
	if err := m.StoreFDs("pipe", int(pw.Fd()), int(pw.Fd())); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	for range 2 {
		select {
		case err := <-dropped:
			want := fmt.Sprintf("notify message from pid %d (not worker %d or its descendant) ignored", os.Getpid(), w.cmd.Process.Pid)
			if err.Error() != want {
				t.Errorf("dropped with %q, want %q", err, want)
			}
		case m := <-ws.Messages():
			t.Fatalf("accepted %+v from the test process", m)
		case <-time.After(10 * time.Second):
			t.Fatal("nothing dropped")
		}
	}
	// The descriptors that came with the dropped datagram are closed: the
	// pipe's last write end is gone.
	expectEOF(t, r)
	if after := openFDs(t); after != before-1 {
		t.Errorf("%d descriptors open before, %d after (one closed by the test)", before, after)
	}
}

func TestWorkerSocketClosesDescriptorsItIsSent(t *testing.T) {
	ws := listen(t)
	r, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w := startWorker(t, ws, "send", []string{"HELPER_FD=1"}, pw)
	pw.Close()
	ws.Watch(w.cmd.Process.Pid)
	m := next(t, ws)
	if m.PID != w.cmd.Process.Pid || m.Fields["FDSTORE"] != "1" || m.Fields["FDNAME"] != "pipe" {
		t.Fatalf("got %+v", m)
	}
	// The worker, still running, has closed its copy; ours is closed too.
	expectEOF(t, r)
}

func expectEOF(t *testing.T, r *os.File) {
	t.Helper()
	r.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := r.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("pipe read gave %d, %v; want EOF, as no write end should be open", n, err)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

// The socket is reachable by a worker that changed its user (the sender
// check keeps strangers out), its directory cannot be listed, and both are
// removed on Close.
func TestWorkerSocketModes(t *testing.T) {
	old := unix.Umask(0o077)
	ws, err := Listen(t.TempDir())
	unix.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	dir := ws.dir
	st, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o711 {
		t.Errorf("directory mode %v, want 0711", st.Mode().Perm())
	}
	if fi, err := os.Lstat(ws.Path()); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("%s: %v, %v", ws.Path(), fi, err)
	} else if fi.Mode().Perm() != 0o666 {
		t.Errorf("socket mode %v, want 0666", fi.Mode().Perm())
	}
	if !strings.HasPrefix(ws.Path(), "/") {
		t.Errorf("Path %q is not absolute", ws.Path())
	}
	// Closed without ever watching.
	if err := ws.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s left behind: %v", dir, err)
	}
	if _, ok := <-ws.Messages(); ok {
		t.Fatal("Messages not closed")
	}
	if err := ws.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ws.Watch(1) // does nothing after Close
}

func TestCloseDoesNotWaitForAReader(t *testing.T) {
	ws := listen(t)
	t.Setenv("NOTIFY_SOCKET", ws.Path())
	ws.Watch(os.Getpid())
	m, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	// More than Messages buffers, and nobody reads. (The kernel queues some
	// more, net.unix.max_dgram_qlen; beyond that the sender blocks.)
	for range 20 {
		if err := m.Watchdog(); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error)
	go func() { done <- ws.Close() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close blocked")
	}
	n := 0
	for range ws.Messages() {
		n++
	}
	if n == 0 {
		t.Fatal("nothing delivered before Close")
	}
}

func TestListenRefusesADirectoryTooDeepForASocket(t *testing.T) {
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if ws, err := Listen(dir); err == nil {
		ws.Close()
		t.Fatal("Listen succeeded")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("left behind %v", entries)
	}
}

// A socket handed over across an execve is adopted by descriptor and path:
// a datagram queued before the handover is delivered after it, checked
// against the worker, and Close then removes the socket and its directory.
func TestAdoptWorkerSocketTakesOverQueuedMessages(t *testing.T) {
	old := listen(t)
	w := startWorker(t, old, "send", []string{"HELPER_MESSAGE=READY=1\nSTATUS=before the exec"})
	fd, err := old.FD()
	if err != nil {
		t.Fatal(err)
	}
	adopted, err := AdoptWorkerSocket(fd, old.Path())
	if err != nil {
		t.Fatal(err)
	}
	// The old image's descriptor goes away at the exec, its files do not.
	if err := old.Release(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(old.Path()); err != nil {
		t.Fatalf("Release removed the socket file: %v", err)
	}
	adopted.Watch(w.cmd.Process.Pid)
	if m := next(t, adopted); m.PID != w.cmd.Process.Pid || !m.Ready || m.Status != "before the exec" {
		t.Fatalf("got %+v from worker %d", m, w.cmd.Process.Pid)
	}
	if err := adopted.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(old.Path())); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the adopted socket's directory is still there: %v", err)
	}
}

// A descriptor that is not the socket the state names is refused, and left
// open for a rollback.
func TestAdoptWorkerSocketRefusesAnotherDescriptor(t *testing.T) {
	a, b := listen(t), listen(t)
	fdB, err := b.FD()
	if err != nil {
		t.Fatal(err)
	}
	r, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer wr.Close()
	for name, fd := range map[string]int{"another socket": fdB, "a pipe": int(r.Fd())} {
		if ws, err := AdoptWorkerSocket(fd, a.Path()); err == nil {
			ws.Release()
			t.Errorf("%s was adopted as %s", name, a.Path())
		} else if !strings.Contains(err.Error(), a.Path()) {
			t.Errorf("error for %s does not name the path: %v", name, err)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != nil {
			t.Errorf("%s was closed: %v", name, err)
		}
	}
}
