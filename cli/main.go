// Package cli is the ss-bridge and start_server command line: options, the --restart and --stop controls, and running the server.
package cli

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Version is ss-bridge's version; StarterVersion the Server::Starter release
// it is compatible with, which is what --version prints as start_server.
const (
	Version        = "0.1.0"
	StarterVersion = "0.35"
)

// Main runs the command line args (args[0] is the program name) and returns
// the exit status. Under the name start_server it is exactly that program.
func Main(args []string) int {
	prog := "ss-bridge"
	if len(args) > 0 && filepath.Base(args[0]) == "start_server" {
		prog = "start_server"
	}
	if os.Getenv(daemonStageEnv) == "1" {
		return daemonIntermediate()
	}
	if os.Getenv(listenFDsShimEnv) == "1" {
		return listenFDsShim(args)
	}
	if prog == "ss-bridge" && len(args) > 1 {
		if command, ok := commands[args[1]]; ok {
			return command(args[2:])
		}
	}
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "%s: %v\n", prog, err)
		return 1
	}
	o, err := Parse(args[1:])
	if err != nil {
		return fail(fmt.Errorf("%w (see --help)", err))
	}
	switch {
	case o.Help:
		usage(os.Stdout, prog)
		return 0
	case o.Version:
		if prog == "start_server" {
			fmt.Println(StarterVersion)
		} else {
			fmt.Printf("ss-bridge %s (start_server %s compatible)\n", Version, StarterVersion)
		}
		return 0
	case o.Restart:
		if err := restartServer(o); err != nil {
			return fail(err)
		}
		return 0
	case o.Stop:
		if err := stopServer(o, os.Stderr); err != nil {
			return fail(err)
		}
		return 0
	}
	if err := serve(o); err != nil {
		return fail(err)
	}
	return 0
}

func usage(w io.Writer, prog string) {
	fmt.Fprintf(w, `Usage: %s [options] -- server-prog server-arg1 server-arg2 ...

A superdaemon for hot-deploying server programs. It binds the sockets, runs
server-prog with them in SERVER_STARTER_PORT, and on SIGHUP starts a new
generation before sending the old one --signal-on-hup.

  e.g. %s --port=8000 -- plackup -s Starlet --max-workers=100 index.psgi

Options:
  --port=(port|host:port|[v6addr]:port)[=fd]
                            TCP port to listen on (repeatable); a "u" before the
                            port (u53, host:u53) makes it UDP; "=fd" passes the
                            socket on that descriptor
  --path=path               unix socket to listen on (repeatable)
  --path-mode=mode          octal permissions of --path sockets (default 0777)
  --backlog=size            listen backlog (default SOMAXCONN)
  --dir=path                directory to start the server program in
  --interval=seconds        how long a new worker must live to count as started
                            (default 1)
  --signal-on-hup=SIGNAL    sent to the old worker on restart (default TERM)
  --signal-on-term=SIGNAL   sent to workers when we get TERM (default TERM)
  --kill-timeout=seconds    SIGKILL a signalled worker that has not exited by
                            then (default 0: never)
  --max-backoff=seconds     cap of the delay between failed starts (default 60)
  --pid-file=filename       write our pid there, locked while we run
  --status-file=filename    write "generation:pid" of live workers there
  --envdir=ENVDIR           directory of environment variables for the workers
  --log-file=file           append our and the workers' output to file
  --log-file="| cmd args"   pipe our and the workers' output to a command
  --daemonize               fork, setsid, fork (requires --log-file)
  --enable-auto-restart     restart the worker periodically
  --auto-restart-interval=seconds  (default 360)
  --kill-old-delay=seconds  wait before signalling old workers (default 0; 5
                            with --enable-auto-restart)
  --restart                 HUP the server in --pid-file and wait until
                            --status-file shows only the new generation
  --stop                    TERM the server in --pid-file and wait for its exit
  --timeout=seconds         bound the wait of --restart and --stop
  --help                    print this help
  --version                 print the version
`, prog, prog)
}
