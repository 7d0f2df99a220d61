package listener_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/listener"
	"golang.org/x/sys/unix"
)

// A complete HTTP worker. Under `ss-bridge --port=127.0.0.1:8080 -- worker` it would find
// its socket under the key "127.0.0.1:8080", serve until SIGTERM, then drain and exit.
func Example() {
	simulateBridge("127.0.0.1:8080")

	// Catch SIGTERM before serving, so that it cannot kill the worker mid-request.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()

	ln, err := listener.Stream("127.0.0.1:8080")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, "hello from the worker")
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	if err := listener.Ready(); err != nil {
		log.Print(err)
	}

	// A real worker does not do this: it serves until ss-bridge sends SIGTERM. The
	// example makes one request to itself and then sends itself the SIGTERM.
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/")
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Print(string(body))
		syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}()

	// Serve until SIGTERM, then stop accepting, answer every accepted
	// connection and return; the worker then exits 0.
	if err := listener.ServeHTTP(ctx, srv, []net.Listener{ln}, 30*time.Second); err != nil {
		log.Fatal(err)
	}
	fmt.Println("shut down")
	// Output:
	// hello from the worker
	// shut down
}

// simulateBridge does what ss-bridge does before starting the worker: it binds a listening
// socket and passes its descriptor in SERVER_STARTER_PORT under key. To run anywhere, it
// binds a free port on 127.0.0.1 rather than the one the key names.
func simulateBridge(key string) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err == nil {
		err = unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
	}
	if err == nil {
		err = unix.Listen(fd, unix.SOMAXCONN)
	}
	if err != nil {
		log.Fatal(err)
	}
	os.Setenv("SERVER_STARTER_PORT", key+"="+strconv.Itoa(fd))
}
