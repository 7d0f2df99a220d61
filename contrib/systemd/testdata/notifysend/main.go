// Command notifysend sends one notification datagram to a unix datagram socket, as
// sd_notify(3) does, from whatever process runs it. The systemd tests run it inside the
// container, as a process that is not a worker's descendant, to spoof a worker's
// notifications.
//
//	notifysend SOCKET MESSAGE
//
// It prints its own pid (as its pid namespace sees it) on stdout, then sends MESSAGE, in
// which "\n" stands for a line break.
package main

import (
	"fmt"
	"net"
	"os"
	"strings"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: notifysend SOCKET MESSAGE")
		os.Exit(2)
	}
	fmt.Println(os.Getpid())
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: os.Args[1], Net: "unixgram"})
	if err != nil {
		fmt.Fprintf(os.Stderr, "notifysend: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(strings.ReplaceAll(os.Args[2], `\n`, "\n"))); err != nil {
		fmt.Fprintf(os.Stderr, "notifysend: %v\n", err)
		os.Exit(1)
	}
}
