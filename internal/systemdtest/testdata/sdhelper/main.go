// Command sdhelper is a minimal systemd service for systemdtest's own tests, independent
// of ss-bridge's packages: it speaks the socket activation and sd_notify protocols
// directly.
//
// With LISTEN_FDS (and LISTEN_PID its pid) it accepts connections on the first passed
// descriptor (fd 3) and answers each with one line, "pid=<pid> gen=<generation>
// fds=<LISTEN_FDS> names=<LISTEN_FDNAMES>", then closes it. With NOTIFY_SOCKET it sends
// READY=1 with a STATUS once it serves. On SIGHUP it reloads as Type=notify-reload
// expects: RELOADING=1 with MONOTONIC_USEC, a new generation, then READY=1. On SIGTERM it
// exits 0. It logs what it does to stderr.
package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

func notify(state string) {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "sdhelper: notify: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		fmt.Fprintf(os.Stderr, "sdhelper: notify: %v\n", err)
		os.Exit(1)
	}
}

func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err)
	}
	return ts.Nano() / 1000
}

func main() {
	var gen atomic.Int64
	gen.Store(1)
	pid := os.Getpid()

	if os.Getenv("LISTEN_PID") == strconv.Itoa(pid) {
		n, _ := strconv.Atoi(os.Getenv("LISTEN_FDS"))
		if n < 1 {
			fmt.Fprintln(os.Stderr, "sdhelper: LISTEN_FDS is", os.Getenv("LISTEN_FDS"))
			os.Exit(1)
		}
		ln, err := net.FileListener(os.NewFile(3, "listen-fd-3"))
		if err != nil {
			fmt.Fprintf(os.Stderr, "sdhelper: fd 3: %v\n", err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					fmt.Fprintf(os.Stderr, "sdhelper: accept: %v\n", err)
					os.Exit(1)
				}
				fmt.Fprintf(c, "pid=%d gen=%d fds=%d names=%s\n", pid, gen.Load(), n, os.Getenv("LISTEN_FDNAMES"))
				c.Close()
			}
		}()
		fmt.Fprintf(os.Stderr, "sdhelper: serving on fd 3 (%s)\n", ln.Addr())
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM)
	notify(fmt.Sprintf("READY=1\nSTATUS=generation %d", gen.Load()))
	for sig := range sigs {
		if sig == syscall.SIGTERM {
			fmt.Fprintln(os.Stderr, "sdhelper: SIGTERM, exiting")
			os.Exit(0)
		}
		notify(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=reloading", monotonicUsec()))
		g := gen.Add(1)
		fmt.Fprintf(os.Stderr, "sdhelper: SIGHUP, now generation %d\n", g)
		notify(fmt.Sprintf("READY=1\nSTATUS=generation %d", g))
	}
}
