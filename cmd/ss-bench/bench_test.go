package main

// Short runs of the benchmark's core pieces, to keep the program from
// rotting: the load generator's failure counting against servers that fail in
// known ways, one HUP-under-load measurement against ss-bridge (no failed
// request), and the report.

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ss-bridge/ss-bridge/internal/testkit"
)

var testBridge string

func TestMain(m *testing.M) {
	// The benchmark runs its own binary as the worker; under test, that
	// binary is this one.
	if len(os.Args) > 1 && os.Args[1] == "worker" {
		os.Exit(workerMain(os.Args[2:]))
	}
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "ss-bench-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	workDir = dir
	if selfPath, err = os.Executable(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Workers are this binary: under -race, their exit must not wait the
	// race detector's default second.
	os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	testBridge = filepath.Join(dir, "ss-bridge")
	if err := testkit.GoBuild("../ss-bridge", testBridge); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

// rawServer answers every connection with handle, on 127.0.0.1.
func rawServer(t *testing.T, handle func(c *net.TCPConn, n int64)) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c.(*net.TCPConn), n.Add(1))
		}
	}()
	return ln.Addr().String()
}

const okResponse = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\npid=1 gen=2\n"

// readRequest reads one request's head.
func readRequest(r *bufio.Reader) error {
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if line == "\r\n" {
			return nil
		}
	}
}

func TestLoadCountsFailures(t *testing.T) {
	answer := func(resp string) func(*net.TCPConn, int64) {
		return func(c *net.TCPConn, _ int64) {
			defer c.Close()
			if readRequest(bufio.NewReader(c)) == nil {
				c.Write([]byte(resp))
			}
		}
	}
	refused := func() string { // a port nobody listens on
		ln, _ := net.Listen("tcp4", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}()
	hang := make(chan struct{})
	defer close(hang)
	cases := []struct {
		name string
		addr string
		want Kind
		ka   bool
	}{
		{"ok", rawServer(t, answer(okResponse)), OK, false},
		{"bad status", rawServer(t, answer("HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")), BadStatus, false},
		{"bad body", rawServer(t, answer("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")), BadStatus, false},
		{"EOF", rawServer(t, answer("")), EOF, false},
		{"truncated", rawServer(t, answer("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\npid=")), EOF, false},
		{"reset", rawServer(t, func(c *net.TCPConn, _ int64) {
			readRequest(bufio.NewReader(c))
			c.SetLinger(0)
			c.Close()
		}), Reset, false},
		{"timeout", rawServer(t, func(c *net.TCPConn, _ int64) {
			<-hang
			c.Close()
		}), Timeout, false},
		{"refused", refused, Refused, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := StartLoad(LoadConfig{Addr: tc.addr, Conns: 2, Rate: 100, Timeout: 100 * time.Millisecond, KeepAlive: tc.ka})
			time.Sleep(300 * time.Millisecond)
			c := count(l.Stop())
			total := 0
			for _, n := range c.N {
				total += n
			}
			if total < 5 || c.N[tc.want] != total {
				t.Errorf("%d requests, want all %v: %v (%+v)", total, tc.want, c, c.N)
			}
		})
	}

	// A keep-alive server that closes every connection after two answers,
	// without a "Connection: close": the third request on it fails, as one
	// unanswered on a reused connection.
	addr := rawServer(t, func(c *net.TCPConn, _ int64) {
		defer c.Close()
		r := bufio.NewReader(c)
		for i := 0; i < 2; i++ {
			if readRequest(r) != nil {
				return
			}
			c.Write([]byte(okResponse))
		}
		readRequest(r)
	})
	l := StartLoad(LoadConfig{Addr: addr, Conns: 1, Rate: 100, Timeout: time.Second, KeepAlive: true})
	time.Sleep(400 * time.Millisecond)
	samples := l.Stop()
	c := count(samples)
	if c.N[OK] < 4 || c.Failed() < 2 || c.IdleClosed != c.Failed() || c.N[OK] < 2*c.Failed()-2 {
		t.Errorf("keep-alive: %v (%+v)", c, c.N)
	}
	if !strings.Contains(c.String(), "unanswered on a reused keep-alive connection") {
		t.Errorf("counts print as %q", c)
	}
}

func TestMaxGap(t *testing.T) {
	ms := time.Millisecond
	s := []Sample{{End: 1 * ms}, {End: 2 * ms}, {End: 3 * ms, Kind: Refused}, {End: 9 * ms}, {End: 10 * ms}}
	if g := maxGap(s, 0, 12*ms); g != 7*ms {
		t.Errorf("maxGap = %v, want 7ms", g)
	}
	if f, ok := firstFrom([]Sample{{End: 1 * ms, Gen: 1}, {End: 2 * ms, Gen: 2}, {End: 3 * ms, Gen: 2}}, 1, 0); !ok || f != 2*ms {
		t.Errorf("firstFrom = %v %v", f, ok)
	}
}

func TestHUPUnderLoad(t *testing.T) {
	p := Params{Runs: 2, Rate: 400, Conns: 4, Latency: time.Millisecond}
	b := Binary{Name: "ss-bridge", Path: testBridge, Notify: true}
	for _, cfg := range []hupConfig{hupConfigs()[1], hupConfigs()[2]} { // --interval=0, --ready=notify
		for _, ka := range []bool{false, true} {
			cfg, ka := cfg, ka
			t.Run(cfg.name+" "+modeName(ka), func(t *testing.T) {
				t.Parallel()
				st, err := runHUP(b, cfg, ka, p)
				if err != nil {
					t.Fatal(err)
				}
				if st.counts.Failed() != 0 || st.counts.N[OK] < 100 {
					t.Errorf("requests: %v of %d", st.counts, st.requests)
				}
				for i, rd := range st.rounds {
					if !rd.hasFirst || !rd.hasSig || rd.newGen <= rd.oldGen {
						t.Errorf("HUP %d: %+v", i+1, rd)
					}
				}
			})
		}
	}
}

func TestReport(t *testing.T) {
	res := newResults()
	res.Add("cost", "RSS idle", MB, "a", 4.5)
	res.Add("cost", "RSS idle", MB, "b", 15)
	res.AddText("HUP, --interval=1 (new conn)", "failed requests", "a", "0 of 10")
	res.NA("HUP, --ready=notify (new conn)", "failed requests", Count, "b", "no --ready=notify")
	res.AddText(systemdScenario("socket unit", 3, false), "failed requests, all cycles", "a", "0 of 10")
	res.AddText(systemdScenario("fd store", 3, false), "failed requests, all cycles", "a", "0 of 10")
	var out strings.Builder
	bins := []Binary{{Name: "a"}, {Name: "b"}}
	res.Print(&out, bins)
	printTargets(&out, res, bins)
	for _, want := range []string{"| cost | RSS idle | 4.5 MB | 15.0 MB | 0.30 |", "n/a (no --ready=notify)", "| failed requests across HUPs, every mode: 0 | 0 |",
		"| superdaemon restart under systemd (socket unit, fd store): 0 failed requests | 0 | — |  | met |"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, out.String())
		}
	}
}

// The pool scenario's measurements with the Go worker (the Node.js one needs
// node, which CI does not install): a rolling reload, a bad build and a
// SIGKILLed worker, each meeting its targets.
func TestPoolPieces(t *testing.T) {
	p := Params{Runs: 1, Rate: 400, Conns: 4, Latency: time.Millisecond, PoolRolls: 2, PoolKillFor: 2 * time.Second}
	b := Binary{Name: "ss-bridge", Path: testBridge, Notify: true}
	k := poolKinds(p)[0]
	poolTargets = nil
	res := newResults()
	runPoolRoll(b, k, true, false, p, res)
	runPoolBadBuild(b, k, false, p, res)
	runPoolKill(b, k, true, p, res)
	if len(poolTargets) < 7 {
		t.Fatalf("%d targets recorded, want 7", len(poolTargets))
	}
	var out strings.Builder
	res.Print(&out, []Binary{b})
	printPoolTargets(&out)
	for _, tg := range poolTargets {
		// Throughput depends on the machine's load; the rest may not.
		if !tg.met && !strings.Contains(tg.target, "throughput") {
			t.Errorf("target not met: %s: %s\n%s", tg.target, tg.figure, out.String())
		}
	}
}
