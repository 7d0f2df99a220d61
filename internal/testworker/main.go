// Command testworker is the worker program the ss-bridge end-to-end tests (and benchmarks)
// run under the bridge.
//
// It serves HTTP on every stream socket passed in SERVER_STARTER_PORT, answering
// "pid=<pid> gen=<SERVER_STARTER_GENERATION>\n" (and the sorted environment, one variable
// a line, on /env), and echoes every datagram received on a packet socket back to its
// sender prefixed with "pid=<pid> ". It writes "worker <pid> gen <gen> serving" to stderr
// once it serves, and "worker <pid> got <SIG>" for every signal it receives.
//
// On SIGTERM (and INT, QUIT or USR1) it drains without losing anything: it stops
// accepting, finishes the request(s) of every accepted connection (closing keep-alive
// connections after their current response, idle ones at once) and exits 0. HUP and USR2
// are only logged.
//
// Flags: -start-delay, -exit-after-start, -ignore-term, -latency, -status-len, -ready,
// -status-flood, -watchdog, -watchdog-once (see -help).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/listener"
	"github.com/ss-bridge/ss-bridge/notify"
)

var sigNames = map[os.Signal]string{
	syscall.SIGTERM: "TERM",
	syscall.SIGINT:  "INT",
	syscall.SIGQUIT: "QUIT",
	syscall.SIGHUP:  "HUP",
	syscall.SIGUSR1: "USR1",
	syscall.SIGUSR2: "USR2",
}

func main() {
	startDelay := flag.Duration("start-delay", 0, "sleep this long before serving")
	exitAfterStart := flag.Int("exit-after-start", -1, "exit with this code right after the start delay (-1: off)")
	ignoreTerm := flag.Bool("ignore-term", false, "ignore SIGTERM and keep serving")
	latency := flag.Duration("latency", 0, "time taken by every request")
	ready := flag.Bool("ready", false, "call listener.Ready() once serving")
	statusLen := flag.Int("status-len", 0, "once serving (before -ready), send a STATUS= of this many bytes")
	statusFlood := flag.Bool("status-flood", false, "once serving (after -ready), send STATUS= to NOTIFY_SOCKET in a loop, as fast as it is taken")
	watchdog := flag.Bool("watchdog", false, "once serving, send WATCHDOG=1 to NOTIFY_SOCKET every half of WATCHDOG_USEC")
	watchdogOnce := flag.Bool("watchdog-once", false, "once serving, send WATCHDOG=1 to NOTIFY_SOCKET once, then never again")
	flag.Parse()

	pid := os.Getpid()
	gen := os.Getenv("SERVER_STARTER_GENERATION")
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "worker %d "+format+"\n", append([]any{pid}, args...)...)
	}

	// Signals are caught from the start, so that a signal arriving during the start
	// delay is logged (and acted on once serving) rather than killing the worker.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)

	time.Sleep(*startDelay)
	if *exitAfterStart >= 0 {
		logf("exiting with %d after start", *exitAfterStart)
		os.Exit(*exitAfterStart)
	}

	streams, err := listener.Streams()
	if err != nil {
		logf("listener.Streams: %v", err)
		os.Exit(1)
	}
	packets, err := listener.Packets()
	if err != nil {
		logf("listener.Packets: %v", err)
		os.Exit(1)
	}

	body := fmt.Sprintf("pid=%d gen=%s\n", pid, gen)
	mux := http.NewServeMux()
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		if *latency > 0 {
			time.Sleep(*latency)
		}
		env := os.Environ()
		sort.Strings(env)
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, strings.Join(env, "\n")+"\n")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if *latency > 0 {
			time.Sleep(*latency)
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprint(w, body)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 30 * time.Second}
	var draining atomic.Bool
	for _, pc := range packets {
		go func(pc net.PacketConn) {
			buf := make([]byte, 65536)
			prefix := []byte(fmt.Sprintf("pid=%d ", pid))
			for {
				n, addr, err := pc.ReadFrom(buf)
				if err != nil {
					if !draining.Load() {
						logf("read %s: %v", pc.LocalAddr(), err)
					}
					return
				}
				if _, err := pc.WriteTo(append(append([]byte{}, prefix...), buf[:n]...), addr); err != nil {
					logf("write %s: %v", pc.LocalAddr(), err)
				}
			}
		}(pc)
	}

	logf("gen %s serving", gen)
	if *statusLen > 0 {
		text := fmt.Sprintf("pid %d: ", pid)
		text += strings.Repeat("s", max(*statusLen-len(text), 0))
		if err := listener.Status(text); err != nil {
			logf("listener.Status: %v", err)
		}
	}
	if *ready {
		if err := listener.Ready(); err != nil {
			logf("listener.Ready: %v", err)
		}
	}
	if *watchdog || *watchdogOnce {
		startWatchdog(*watchdogOnce, logf)
	}
	if *statusFlood {
		go floodStatus(logf)
	}

	ctx, drain := context.WithCancel(context.Background())
	go func() {
		for sig := range sigs {
			logf("got %s", sigNames[sig])
			switch {
			case sig == syscall.SIGHUP || sig == syscall.SIGUSR2:
			case sig == syscall.SIGTERM && *ignoreTerm:
			default:
				draining.Store(true)
				for _, pc := range packets {
					pc.Close()
				}
				drain()
				return
			}
		}
	}()
	// listener.ServeHTTP drains without losing a request (http.Server.Shutdown
	// would close a connection accepted before it, whose request is read
	// after, without an answer).
	if err := listener.ServeHTTP(ctx, srv, streams, 0); err != nil {
		logf("%v", err)
		os.Exit(1)
	}
	logf("drained, exiting")
	os.Exit(0)
}

// startWatchdog sends WATCHDOG=1 to NOTIFY_SOCKET: once, or every half of WATCHDOG_USEC
// from a goroutine.
func startWatchdog(once bool, logf func(string, ...any)) {
	m, err := notify.FromEnv()
	if err != nil {
		logf("notify.FromEnv: %v", err)
		return
	}
	ping := func() {
		if err := m.Watchdog(); err != nil {
			logf("watchdog: %v", err)
		}
	}
	if once {
		ping()
		logf("sent WATCHDOG=1 once")
		return
	}
	every, ok := m.WatchdogInterval()
	if !ok {
		logf("watchdog: no NOTIFY_SOCKET or WATCHDOG_USEC, not pinging")
		return
	}
	logf("sending WATCHDOG=1 every %v", every)
	ping()
	go func() {
		for range time.Tick(every) {
			ping()
		}
	}()
}

// floodStatus sends "STATUS=busy N" to NOTIFY_SOCKET, N counting up, for as long as
// the process lives, with blocking sends: as fast as the reader takes them.
func floodStatus(logf func(string, ...any)) {
	logf("flooding NOTIFY_SOCKET with STATUS=")
	for n := 0; ; n++ {
		if err := listener.Status(fmt.Sprintf("busy %d", n)); err != nil {
			logf("status flood stopped: %v", err)
			return
		}
	}
}
