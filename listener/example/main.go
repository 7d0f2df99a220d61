// Command example is an ss-bridge worker: it serves HTTP on every stream socket in
// SERVER_STARTER_PORT, answering "hello from generation G (pid P)", and on SIGTERM or
// SIGINT stops accepting, finishes the requests in flight and exits 0.
//
//	go build -o bin/example-worker ./listener/example
//	bin/ss-bridge --port=127.0.0.1:8080 -- bin/example-worker
package main

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ss-bridge/ss-bridge/listener"
)

func main() {
	pid := os.Getpid()
	gen := os.Getenv("SERVER_STARTER_GENERATION")
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("example-worker (generation %s, pid %d): ", gen, pid))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	lns, err := listener.Streams()
	if err != nil {
		log.Fatal(err)
	}
	if len(lns) == 0 {
		log.Fatal("no stream socket in SERVER_STARTER_PORT")
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "hello from generation %s (pid %d)\n", gen, pid)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	for _, ln := range lns {
		log.Printf("serving http on %s", ln.Addr())
	}
	drain, startDrain := context.WithCancel(context.Background())
	go func() {
		// The sockets queue connections already, so READY=1 can go before
		// ServeHTTP accepts.
		if err := listener.Ready(); err != nil {
			log.Print(err)
		}
		<-ctx.Done()
		log.Print("shutting down")
		startDrain()
	}()
	if err := listener.ServeHTTP(drain, srv, lns, 30*time.Second); err != nil {
		log.Fatal(err)
	}
	log.Print("done")
}
