// peer: the reference the bench compares the elector with. client-go's leaderelection with a
// LeaseLock and the library's documented defaults (15 s lease, 10 s renew deadline, 2 s retry),
// ReleaseOnCancel, answering the elector's own `GET /` → {"name":"<leader>"} so the bench probes
// both the same way. It stays a candidate after losing the lease, as the elector does.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

func main() {
	id := flag.String("id", "", "this candidate's identity (required)")
	lease := flag.String("election", "", "the Lease's name (required)")
	namespace := flag.String("election-namespace", "default", "the Lease's namespace")
	addr := flag.String("http", "127.0.0.1:4040", "where GET / answers")
	leaseDuration := flag.Duration("lease-duration", 15*time.Second, "LeaseDuration")
	renewDeadline := flag.Duration("renew-deadline", 10*time.Second, "RenewDeadline")
	retryPeriod := flag.Duration("retry-period", 2*time.Second, "RetryPeriod")
	flag.Parse()
	if *id == "" || *lease == "" {
		fmt.Fprintln(os.Stderr, "peer: --id and --election are required")
		os.Exit(2)
	}

	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(
		clientcmd.NewDefaultClientConfigLoadingRules(), &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		log.Fatalf("peer: kubeconfig: %v", err)
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: *lease, Namespace: *namespace},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: *id},
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var current atomic.Pointer[leaderelection.LeaderElector]
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		name := ""
		if le := current.Load(); le != nil {
			name = le.GetLeader()
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"name": name})
	})
	// The elector's /status carries more; is_leader is what the bench asks ("do you lead?").
	http.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		le := current.Load()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"is_leader": le != nil && le.IsLeader()})
	})
	http.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte("ok")) })
	srv := &http.Server{Addr: *addr}
	go func() {
		if err := srv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
			log.Fatalf("peer: listening on %s: %v", *addr, err)
		}
	}()

	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   *leaseDuration,
			RenewDeadline:   *renewDeadline,
			RetryPeriod:     *retryPeriod,
			ReleaseOnCancel: true,
			Name:            *lease,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) { log.Printf("%s: leading", *id) },
				OnStoppedLeading: func() { log.Printf("%s: stopped leading", *id) },
				OnNewLeader:      func(l string) { log.Printf("%s: leader is %s", *id, l) },
			},
		})
		if err != nil {
			log.Fatalf("peer: %v", err)
		}
		current.Store(le)
		le.Run(ctx) // returns when leadership is lost or ctx ends (after releasing)
	}
	shutdown, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdown)
}
