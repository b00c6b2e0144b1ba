// Command pause is the sandbox process of crisp's test images (registry.k8s.io/pause): it sleeps until SIGINT or
// SIGTERM (then exits 0) and, as PID 1 of a shared PID namespace, reaps every orphan that is reparented to it.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

const version = "crisp-test-pause 1"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-v" {
		fmt.Println(version)
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not running as PID 1")
	}
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			fmt.Fprintf(os.Stderr, "pause: %v: exiting\n", sig)
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every child that has exited (one SIGCHLD may stand for several).
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if pid <= 0 || err != nil {
			return
		}
	}
}
