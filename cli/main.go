// Package cli is the ss-bridge and start_server command line: it parses the options and commands and dispatches them.
package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/ss-bridge/ss-bridge/service"
)

// StarterVersion is the Server::Starter release ss-bridge is compatible
// with, which is what --version prints as start_server.
const StarterVersion = "0.35"

// Main runs the command line args (args[0] is the program name) and returns
// the exit status. Under the name start_server it is exactly that program.
func Main(args []string) int {
	prog := "ss-bridge"
	if len(args) > 0 && filepath.Base(args[0]) == "start_server" {
		prog = "start_server"
	}
	// The re-executions of ss-bridge by the server itself.
	if service.InDaemonIntermediate() {
		return service.DaemonIntermediate()
	}
	if service.InListenFDsShim() {
		return service.ListenFDsShim(args)
	}
	if prog == "ss-bridge" && len(args) > 1 {
		if args[1] == "help" {
			return helpCommand(args[2:])
		}
		if command, ok := commands[args[1]]; ok {
			if asksForHelp(args[2:]) {
				fmt.Print(commandUsage[args[1]])
				return 0
			}
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
			fmt.Println(versionLine())
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
	if service.InPreflight() {
		return preflight(o)
	}
	if err := serve(o); err != nil {
		return fail(err)
	}
	return 0
}
