// Package testkit is what the test suites that run real binaries share: building them, free ports, asking a test worker which generation answers, and load.
package testkit

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// CloseOnExecInherited marks every descriptor above 2 close-on-exec. Those
// inherited from the shell that ran go test would otherwise reach every
// bridge started and its workers, and upset the tests that count their
// descriptors.
func CloseOnExecInherited() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.CloseOnExec(fd)
		}
	}
}

// RaceFlags is the go build flags for the bridge under test: -race when
// SS_BRIDGE_TEST_RACE=1, so that a data race it reports fails the test.
func RaceFlags() []string {
	if os.Getenv("SS_BRIDGE_TEST_RACE") == "1" {
		return []string{"-race"}
	}
	return nil
}

// GoBuild builds the main package pkg (a path or an import path) to out;
// the error carries the compiler's output.
func GoBuild(pkg, out string, flags ...string) error {
	args := append(append([]string{"build", "-o", out}, flags...), pkg)
	if output, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, output)
	}
	return nil
}

// Binaries are the programs the suites run, built by Build.
type Binaries struct {
	Dir    string // a new temporary directory, which holds them
	Bridge string // ss-bridge
	Worker string // internal/testworker
}

// Build builds ss-bridge (with RaceFlags) and internal/testworker into a new
// temporary directory named after what; root is the module's root relative
// to the test's directory. A bridge given is used as it is, not built. The
// caller removes b.Dir.
func Build(what, root, bridge string) (b Binaries, err error) {
	if b.Dir, err = os.MkdirTemp("", "ss-bridge-"+what+"-"); err != nil {
		return b, err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(b.Dir)
		}
	}()
	b.Bridge, b.Worker = bridge, filepath.Join(b.Dir, "testworker")
	if b.Bridge == "" {
		b.Bridge = filepath.Join(b.Dir, "ss-bridge")
		if err := GoBuild(filepath.Join(root, "cmd/ss-bridge"), b.Bridge, RaceFlags()...); err != nil {
			return b, err
		}
	}
	return b, GoBuild(filepath.Join(root, "internal/testworker"), b.Worker)
}

// FreePorts returns n distinct TCP ports on 127.0.0.1 that were free: they
// are bound together, then released.
func FreePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free.
func FreePort(t testing.TB) int {
	t.Helper()
	ports, err := FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	return ports[0]
}

var compiled sync.Map // pattern -> *regexp.Regexp

// Regexp is pattern compiled, once per process: the tests wait for output
// lines by pattern in polling loops. It panics on a bad pattern.
func Regexp(pattern string) *regexp.Regexp {
	if r, ok := compiled.Load(pattern); ok {
		return r.(*regexp.Regexp)
	}
	r := regexp.MustCompile(pattern)
	compiled.Store(pattern, r)
	return r
}

var answerRE = regexp.MustCompile(`^pid=(\d+) gen=(\d+)\n$`)

// ParseAnswer reads the answer of internal/testworker (and of the test
// workers like it), "pid=N gen=N\n": the pid and generation of the worker
// that answered.
func ParseAnswer(body string) (pid, gen int, err error) {
	m := answerRE.FindStringSubmatch(body)
	if m == nil {
		return 0, 0, fmt.Errorf("unexpected response body %q", body)
	}
	pid, _ = strconv.Atoi(m[1])
	gen, _ = strconv.Atoi(m[2])
	return pid, gen, nil
}

// Body GETs url with c and returns the body; a status other than 200 is an
// error, returned with the body.
func Body(c *http.Client, url string) (string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("status %s", resp.Status)
	}
	return string(body), nil
}

// Ask GETs url with c and returns the pid and generation of the test worker
// that answered.
func Ask(c *http.Client, url string) (pid, gen int, err error) {
	body, err := Body(c, url)
	if err != nil {
		return 0, 0, err
	}
	return ParseAnswer(body)
}

// Load sends requests from several clients, each in a loop, until Finish,
// and counts how they fare.
type Load struct {
	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	ok      int
	failed  int
	refused int
	gens    map[int]int // answers by generation
	errs    []string    // the first failures
}

// StartLoad starts clients loops, each calling request(i), i its number,
// with pause after each call; request returns the generation that answered.
func StartLoad(clients int, pause time.Duration, request func(client int) (gen int, err error)) *Load {
	l := &Load{stop: make(chan struct{}), gens: map[int]int{}}
	for i := range clients {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				gen, err := request(i)
				l.mu.Lock()
				switch {
				case err == nil:
					l.ok++
					l.gens[gen]++
				case errors.Is(err, syscall.ECONNREFUSED):
					l.refused++
					l.failed++
				default:
					l.failed++
				}
				if err != nil && len(l.errs) < 10 {
					l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" "+err.Error())
				}
				l.mu.Unlock()
				if pause > 0 {
					time.Sleep(pause)
				}
			}
		}()
	}
	return l
}

// Finish stops the load and fails the test unless every request was
// answered, and one at least.
func (l *Load) Finish(t testing.TB, what string) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	gens := make([]int, 0, len(l.gens))
	for g := range l.gens {
		gens = append(gens, g)
	}
	sort.Ints(gens)
	t.Logf("%s: %d requests answered, %d failed (%d refused); answered by %d generations (%v)",
		what, l.ok, l.failed, l.refused, len(gens), gens)
	if l.ok == 0 {
		t.Errorf("%s: no request was answered", what)
	}
	if l.failed > 0 {
		t.Errorf("%s: %d of %d requests failed, %d of them refused; first failures:\n%s",
			what, l.failed, l.ok+l.failed, l.refused, strings.Join(l.errs, "\n"))
	}
}
