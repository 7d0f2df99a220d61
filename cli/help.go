package cli

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// usage prints --help. Under the name start_server it is 0.35's list, so
// that the drop-in documents what 0.35 documents; ss-bridge's own options
// work under that name too and are listed by ss-bridge --help.
func usage(w io.Writer, prog string) {
	if prog == "start_server" {
		fmt.Fprint(w, starterUsage)
		return
	}
	fmt.Fprint(w, bridgeUsage)
}

const starterUsage = `Usage: start_server [options] -- server-prog server-arg1 server-arg2 ...

  e.g. start_server --port=8000 -- plackup -s Starlet --max-workers=100 index.psgi

Options:
  --port=(port|host:port|[v6addr]:port)[=fd]
                            TCP port to listen on (repeatable); a "u" before the
                            port (u53, host:u53) makes it UDP; "=fd" passes the
                            socket on that descriptor
  --path=path               unix socket to listen on (repeatable)
  --dir=path                directory to start the server program in
  --interval=seconds        how long a new worker must live to count as started
                            (default 1)
  --signal-on-hup=SIGNAL    sent to the old worker on restart (default TERM)
  --signal-on-term=SIGNAL   sent to workers when we get TERM (default TERM)
  --pid-file=filename       write our pid there
  --status-file=filename    write "generation:pid" of live workers there
  --envdir=ENVDIR           directory of environment variables for the workers
  --log-file=file           append our and the workers' output to file
  --log-file="| cmd args"   pipe our and the workers' output to a command
  --daemonize               fork, setsid, fork (requires --log-file)
  --enable-auto-restart     restart the worker periodically
  --auto-restart-interval=seconds  (default 360)
  --kill-old-delay=seconds  wait before signalling old workers (default 0; 5
                            with --enable-auto-restart)
  --backlog=size            listen backlog (default SOMAXCONN)
  --restart                 restart the server in --pid-file and --status-file
  --stop                    stop the server in --pid-file
  --help                    print this help
  --version                 print the version

This start_server is ss-bridge; its own options are listed by ss-bridge --help.
`

const bridgeUsage = `Usage: ss-bridge [options] -- server-prog [server-args...]
       ss-bridge COMMAND [options] [args...]
       ss-bridge help [COMMAND]

A superdaemon for hot-deploying servers, and a drop-in start_server (Perl's
Server::Starter 0.35). It binds the sockets, runs server-prog with them in
SERVER_STARTER_PORT, and on SIGHUP starts a new generation of it before it
signals the old one.

  e.g. ss-bridge --port=127.0.0.1:8080 -- /usr/local/bin/web --config web.conf

Options of start_server 0.35:
  --port=(port|host:port|[v6addr]:port)[=fd]
                            TCP socket to listen on (repeatable); a "u" before
                            the port (u53, host:u53) makes it UDP; "=fd" passes
                            the socket on that descriptor
  --path=path               unix socket to listen on (repeatable)
  --dir=path                directory to start the server program in
  --interval=seconds        how long a new worker must live to count as
                            started (default 1)
  --signal-on-hup=SIGNAL    sent to the old generation on restart (default
                            TERM); a name or a number
  --signal-on-term=SIGNAL   sent to every generation on TERM (default TERM)
  --pid-file=file           write our pid there, locked while we run
  --status-file=file        write "generation:pid" of live workers there
  --envdir=dir              files NAME in dir set NAME for each new worker
  --log-file=file           append our and the workers' output to file
  --log-file="| cmd args"   pipe our and the workers' output to a command
  --daemonize               run in the background (requires --log-file)
  --enable-auto-restart     restart the worker every --auto-restart-interval
  --auto-restart-interval=seconds
                            (default 360)
  --kill-old-delay=seconds  wait before signalling the old generation
                            (default 0; 5 with --enable-auto-restart)
  --backlog=size            listen backlog (default SOMAXCONN)
  --restart                 HUP the server in --pid-file and wait until
                            --status-file shows only the new generation
  --stop                    TERM the server in --pid-file and wait for its exit
  --help                    print this help
  --version                 print the version

Options beyond 0.35:
  --path-mode=mode          octal permissions of --path sockets (default 0777)
  --kill-timeout=seconds    SIGKILL a signalled worker that has not exited by
                            then (default 0: never)
  --max-backoff=seconds     cap of the delay between failed starts (default 60)
  --timeout=seconds         give up --restart or --stop after this long (exit 1)
  --workers=N               run N workers per generation (a pool), each told
                            its slot in SERVER_STARTER_WORKER_SLOT; TTIN adds
                            one, TTOU removes one
  --rolling                 restart a pool a few workers at a time, stopping
                            at the first new one that fails to start or dies
  --max-surge=K             with --rolling: new workers started at a time
                            (default 1)

Options for systemd's protocols:
  --ready=interval|notify   a new worker counts as started after --interval
                            (default), or when it sends READY=1 to its
                            NOTIFY_SOCKET
  --ready-timeout=seconds   with --ready=notify: fail a worker silent this long
                            (default 60)
  --worker-watchdog=seconds give workers WATCHDOG_USEC; replace a worker that
                            sent WATCHDOG=1 and then is silent this long
  --listen-fds              pass the sockets as systemd does (LISTEN_FDS,
                            LISTEN_FDNAMES, LISTEN_PID) instead

Options take --name=value or --name value; a unique prefix of a name works.
Under systemd (NOTIFY_SOCKET, LISTEN_FDS set) ss-bridge notifies READY=1,
RELOADING=1 and STATUS=, takes socket-activated sockets and uses the fd store.

Commands:
  unit      print or install a systemd service (and socket) running ss-bridge
  reload    reload a unit and wait for its new generation
  status    say whether a unit or a standalone server runs, and its generations
  stop      stop a standalone server, with --timeout and --force
  upgrade   replace a running server's program in place (same pid and workers)
  scale     set a running pool's number of workers (--workers) and wait for it
  log       print (and follow) a --log-file
  help      print this help, or a command's (ss-bridge help COMMAND)

Environment:
  ENVDIR, ENABLE_AUTO_RESTART, AUTO_RESTART_INTERVAL, KILL_OLD_DELAY
            the defaults of --envdir, --enable-auto-restart,
            --auto-restart-interval and --kill-old-delay (files in the envdir
            win); read at each start attempt and when an auto-restart
            falls due (0.35 read them at every wake)
  Workers get SERVER_STARTER_PORT ("key=fd;..."), SERVER_STARTER_GENERATION,
  and with --ready=notify or --worker-watchdog a NOTIFY_SOCKET of their own.

Signals: HUP starts a new generation; TERM, INT and QUIT stop every
generation and exit; USR2 upgrades ss-bridge in place. See ss-bridge(1) for
everything.
`

// commandUsage is each command's --help, and what "ss-bridge help COMMAND"
// prints.
var commandUsage = map[string]string{
	"unit": `Usage: ss-bridge unit --name NAME [--socket] [--user] [--systemd-version=N]
                      [--binary=PATH] [--install [--enable] [--now] |
                      --output-dir=DIR] [--force]
                      [server options] -- server-prog [server-args...]

Prints NAME.service, a unit that runs ss-bridge with the server options (and
with --socket NAME.socket, holding the --port and --path sockets), or with
--install writes them and makes systemd read them. server-prog is made
absolute, WorkingDirectory= is --dir or the current directory.

  --name=NAME               the unit's name (required)
  --socket                  also write NAME.socket for socket activation
  --user                    a unit of the user's service manager
  --systemd-version=N       the systemd version to write for (default: ask
                            systemd); 253 and later get Type=notify-reload
  --binary=PATH             ss-bridge's path in ExecStart= (default: this one)
  --output-dir=DIR          write the unit files into DIR instead of printing
                            them (not with --install)
  --install                 write the units to /etc/systemd/system (or the
                            user's unit directory) and reload systemd
  --enable                  with --install: enable the socket (or the service)
  --now                     with --install: start it
  --force                   with --install or --output-dir: replace different
                            existing files
  --help                    print this help

Every ss-bridge option except --daemonize, --restart, --stop and --version is
a server option (see ss-bridge --help).

  e.g. ss-bridge unit --name web --socket --install --enable --now \
         --port=127.0.0.1:8080 --ready=notify -- /usr/local/bin/web
`,
	"reload": `Usage: ss-bridge reload [--user] [--timeout=seconds] UNIT

Reloads UNIT over D-Bus (after any start or reload under way) and prints the
generation that serves, one started after the command. A unit that is not
running: says its next start runs the new code, exit 0. Exit status 1 when
the unit has failed, the reload failed (the old generation still serves), or
the timeout passed.

  --user                    a unit of the user's service manager
  --timeout=seconds         give up after this long (default 90)
  --help                    print this help
`,
	"status": `Usage: ss-bridge status [--user] [--json] UNIT
       ss-bridge status --pid-file=file [--status-file=file] [--json]

Says whether UNIT, or the standalone server of --pid-file, runs: its state,
main pid, uptime, status text and live generations. The exit status is LSB's:
0 running, 1 dead with a pid file left, 3 not running, 4 unknown.

A server with a control socket (beside its pid file, FILE.ctl, or in its
$RUNTIME_DIRECTORY) is asked for its live state: every worker with its
generation, slot, pid, start time, restarts and last STATUS=, and the last
reload's start, end and outcome. Without one, the files and the server's
children are read.

  --user                    a unit of the user's service manager
  --json                    print one JSON object
  --pid-file=file           the standalone server's --pid-file
  --status-file=file        its --status-file (default: look at its children)
  --help                    print this help
`,
	"stop": `Usage: ss-bridge stop --pid-file=file [--status-file=file]
                      [--timeout=seconds [--force]]

Sends TERM to the server in --pid-file and waits until it has exited, like
--stop.

  --pid-file=file           the server's --pid-file (required)
  --status-file=file        its --status-file: with --force, its workers are
                            killed too
  --timeout=seconds         give up after this long, exit 1 (default: never)
  --force                   with --timeout: SIGKILL the server and its workers
                            instead of giving up, and remove the files they
                            leave
  --help                    print this help
`,
	"upgrade": `Usage: ss-bridge upgrade --pid-file=file [--timeout=seconds]
       ss-bridge upgrade [--user] [--timeout=seconds] UNIT

Asks the server in --pid-file, or UNIT's main process (through systemd), to
replace its program with the file it was started from (SIGUSR2), in place:
the same pid, workers, sockets, generation and files. The new program is
first run as a preflight to check that it can take over; if not, the old one
carries on. Prints the old and new versions and exits 0 once the new program
serves; exit 1, with the reason, when the upgrade was refused or failed, or
the timeout passed.

  --pid-file=file           the standalone server's --pid-file
  --user                    a unit of the user's service manager
  --timeout=seconds         give up after this long (default 30)
  --help                    print this help
`,
	"scale": `Usage: ss-bridge scale --pid-file=file [--timeout=seconds] N
       ss-bridge scale [--user] [--timeout=seconds] UNIT N

Sets the number of workers of a pool (a server run with --workers) to N,
through the server's control socket (beside its pid file, or, for UNIT, of
its main process), and waits until N workers serve. Added workers start at
once; removed ones (the last slots) get --signal-on-hup. Exit 0 once N serve;
exit 1 when the server runs a single worker, N is not from 1 to 1024, the
server cannot be reached, or the timeout passed.

  --pid-file=file           the standalone server's --pid-file
  --user                    a unit of the user's service manager
  --timeout=seconds         give up after this long (default 60)
  --help                    print this help
`,
	"log": `Usage: ss-bridge log --log-file=file [--follow]

Prints what a server and its workers wrote to --log-file.

  --log-file=file           the server's --log-file
  --follow                  keep printing what is appended, across rotation
  --help                    print this help
`,
	"help": `Usage: ss-bridge help [COMMAND]

Prints ss-bridge's help, or a command's.
`,
}

// helpCommand is "ss-bridge help [COMMAND]".
func helpCommand(args []string) int {
	switch {
	case len(args) == 0:
		usage(os.Stdout, "ss-bridge")
		return 0
	case len(args) == 1:
		if text, ok := commandUsage[args[0]]; ok {
			fmt.Print(text)
			return 0
		}
	}
	names := make([]string, 0, len(commandUsage))
	for name := range commandUsage {
		names = append(names, name)
	}
	sort.Strings(names)
	return failed(fmt.Errorf("help: %q is not a command (%s)", strings.Join(args, " "), strings.Join(names, ", ")))
}

// asksForHelp reports whether a command's arguments hold --help (or -help)
// before "--": the commands' option tables leave it out, so that a command
// that fails to parse its other options still gives its help.
func asksForHelp(args []string) bool {
	for _, arg := range args {
		if arg == "--" {
			return false
		}
		if name := strings.TrimPrefix(strings.TrimPrefix(arg, "-"), "-"); arg != name && strings.EqualFold(name, "help") {
			return true
		}
	}
	return false
}
