// Command ss-bridge is a superdaemon for hot-deploying servers, and a drop-in start_server.
package main

import (
	"os"

	"github.com/ss-bridge/ss-bridge/cli"
)

func main() {
	os.Exit(cli.Main(os.Args))
}
