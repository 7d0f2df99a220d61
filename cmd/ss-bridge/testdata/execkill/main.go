// execkill stands in for ss-bridge as the candidate of a self-upgrade: in the preflight it
// runs the real binary at once; in the exec itself it first SIGKILLs the pid written in
// $EXECKILL_PIDFILE, if any, and waits 300 ms, so that a worker exits (or a signal
// arrives) while the process runs neither ss-bridge image, and then executes the real
// binary ($EXECKILL_BINARY) in its place.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The workers were forked by the main thread; an exec from another thread would end it
// and send them their parent-death signal.
func init() { runtime.LockOSThread() }

func main() {
	bin := os.Getenv("EXECKILL_BINARY")
	if os.Getenv("SS_BRIDGE_PREFLIGHT") == "" {
		data, err := os.ReadFile(os.Getenv("EXECKILL_PIDFILE"))
		if pid, perr := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && perr == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(300 * time.Millisecond)
	}
	err := syscall.Exec(bin, os.Args, os.Environ())
	fmt.Fprintf(os.Stderr, "execkill: %v\n", err)
	os.Exit(127)
}
