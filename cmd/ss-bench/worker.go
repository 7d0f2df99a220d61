package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/listener"
)

// workerMain is the benchmark's worker, run as "ss-bench worker [flags]" by
// the superdaemon under test. It serves HTTP on every stream socket in
// SERVER_STARTER_PORT, answering "pid=<pid> gen=<generation>\n" after the
// configured latency, and drains losslessly on SIGTERM or SIGINT with
// listener.ServeHTTP (http.Server.Shutdown can close a connection whose
// request it has not read yet, which would count against the superdaemon).
// HUP and USR2 are ignored, so that --signal-on-hup=USR2 keeps old
// generations alive. With -events it appends "<pid> <event> <unix ns>" lines
// (start, ready, term, exit) to a file, for timings the load cannot see.
func workerMain(args []string) int {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	latency := fs.Duration("latency", 0, "time taken by every request")
	startDelay := fs.Duration("start-delay", 0, "sleep this long before serving")
	ready := fs.Bool("ready", false, "send READY=1 to $NOTIFY_SOCKET once serving")
	events := fs.String("events", "", "append timestamped events to this file")
	exitIf := fs.String("exit-if", "", "exit 1 at once if this file exists (a bad build)")
	procs := fs.Int("procs", 0, "GOMAXPROCS (0: the runtime's default), 1 for a one-core worker")
	noReadyIf := fs.String("no-ready-if", "", "never send READY=1 if this file exists (a bad build that hangs)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *procs > 0 {
		runtime.GOMAXPROCS(*procs)
	}
	pid := os.Getpid()
	event := func(name string) {
		if *events == "" {
			return
		}
		f, err := os.OpenFile(*events, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
		if err != nil {
			return
		}
		// One write of a short line with O_APPEND: lines of concurrent
		// workers never mix.
		fmt.Fprintf(f, "%d %s %d\n", pid, name, time.Now().UnixNano())
		f.Close()
	}
	event("start")
	if *exitIf != "" {
		if _, err := os.Stat(*exitIf); err == nil {
			event("exit")
			return 1
		}
	}
	if *noReadyIf != "" {
		if _, err := os.Stat(*noReadyIf); err == nil {
			*ready = false
		}
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR2)
	time.Sleep(*startDelay)

	lns, err := listener.Streams()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench worker %d: %v\n", pid, err)
		return 1
	}
	body := []byte(fmt.Sprintf("pid=%d gen=%s\n", pid, os.Getenv("SERVER_STARTER_GENERATION")))
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if *latency > 0 {
				time.Sleep(*latency)
			}
			w.Header().Set("Content-Type", "text/plain")
			w.Write(body)
		}),
		ReadHeaderTimeout: 30 * time.Second,
	}
	ctx, drain := context.WithCancel(context.Background())
	go func() {
		for sig := range sigs {
			if sig == syscall.SIGTERM || sig == syscall.SIGINT {
				event("term")
				drain()
				return
			}
		}
	}()
	event("ready")
	if *ready {
		if err := listener.Ready(); err != nil {
			fmt.Fprintf(os.Stderr, "bench worker %d: %v\n", pid, err)
		}
	}
	if err := listener.ServeHTTP(ctx, srv, lns, 0); err != nil {
		fmt.Fprintf(os.Stderr, "bench worker %d: %v\n", pid, err)
		event("exit")
		return 1
	}
	event("exit")
	return 0
}
