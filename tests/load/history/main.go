// history - a history checker for demo-server's Buy routes.
//
// It drives many clients over every Buy route (quantities 1..3) against the
// real server, records every request and response (start and end times,
// status, body), kills an instance with SIGKILL mid-load and restarts it on
// the same data dir, (-mongo) restocks every SKU through Admin/Stock each
// time the crowd has sold it out (-restocks cycles), runs on until sold
// out, reads the final state (peeks;
// with -mongo also MongoDB itself, through mongo_docs), and checks the
// history: see check.go for what exactly is checked in each mode.
//
//	history run -server build/release/demo-server -dir /tmp/x [-initial 500 -clients 16 ...]
//	history run -server … -mongo mongodb://… -redis redis://… -mongo-docs build/release/tests/mongo_docs
//	history check saved.json        (re-check a history written with -out)
//
// Output: one "ok - …" or "FAIL - …" line per check, then
// "checks: N passed, M failed"; exit status 1 if any check failed, 2 if the
// scenario could not be run.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: history run -server BIN [flags] | history check FILE [flags]")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	var cfg Config
	var p Params
	var out string
	var linTimeout, stale time.Duration
	fs.StringVar(&cfg.Server, "server", "", "demo-server binary")
	fs.StringVar(&cfg.Dir, "dir", "", "work dir for data dirs and logs (default: a new temp dir, removed)")
	fs.Int64Var(&cfg.Initial, "initial", 500, "--initial-stock of every SKU (small, so that it sells out)")
	fs.IntVar(&cfg.Clients, "clients", 16, "clients per instance (one keep-alive connection each)")
	fs.IntVar(&cfg.Threads, "threads", 64, "--threads of each instance (>= clients)")
	fs.DurationVar(&cfg.MaxLoad, "max-load", 15*time.Second, "bound on the load phase")
	fs.Float64Var(&cfg.KillAt, "kill-at", 0.35, "kill -9 an instance once this fraction of all stock is acknowledged (0: no kill)")
	fs.DurationVar(&cfg.Think, "think", 0, "mean random pause between a client's requests")
	fs.Int64Var(&cfg.Seed, "seed", time.Now().UnixNano()%1000000, "random seed (printed)")
	fs.StringVar(&cfg.Mongo, "mongo", "", "MongoDB URI: three instances on it (multi mode)")
	fs.StringVar(&cfg.MongoDB, "mongo-db", "", "database (default: history_<pid>)")
	fs.StringVar(&cfg.Redis, "redis", "", "Redis URL for the instances (multi mode)")
	fs.StringVar(&cfg.MongoDocs, "mongo-docs", "", "tests/services/mongo_docs binary (multi mode)")
	fs.IntVar(&cfg.Instances, "instances", 0, "instances (default 1, with -mongo 3)")
	fs.Int64Var(&cfg.LeaseBlock, "lease-block", 25, "--lease-block of each instance (multi)")
	fs.IntVar(&cfg.Restocks, "restocks", 2, "multi: sold out -> Admin restock cycles per SKU, from one instance while all keep buying (0: none)")
	fs.Float64Var(&cfg.RestockMin, "restock-min", 0.1, "a restock adds at least this fraction of -initial")
	fs.Float64Var(&cfg.RestockMax, "restock-max", 0.3, "a restock adds at most this fraction of -initial")
	fs.DurationVar(&stale, "stale", time.Second, "B: a change that grows a pool (restock, returned lease) reaches every "+
		"instance within this; a 409 may be this stale (restock windows are stretched by it)")
	fs.BoolVar(&cfg.Verbose, "v", false, "log the phases on stderr")
	fs.StringVar(&out, "out", "", "write the history (JSON) here")
	fs.Int64Var(&p.CacheLossMax, "cache-loss-max", -1,
		"units of acknowledged write-behind buys a kill -9 may lose, single instance (-1: 4096 records x 3, the documented bound)")
	fs.Int64Var(&p.LeaseHoldMax, "lease-hold-max", -1, "units one lease may hold at a time (-1: 2 x ceil(initial/8) + 3)")
	fs.StringVar(&p.Levels, "levels", "exact", "exact: a 200 carries the level just after its own take; after: a level read after it")
	fs.DurationVar(&linTimeout, "linear-timeout", 10*time.Second, "porcupine's bound per partition")
	if err := fs.Parse(os.Args[2:]); err != nil {
		usage()
	}
	var h *History
	cleanup := func() {}
	exit := func(code int) { cleanup(); os.Exit(code) }
	switch os.Args[1] {
	case "run":
		if cfg.Server == "" {
			usage()
		}
		if cfg.Instances == 0 {
			cfg.Instances = 1
			if cfg.Mongo != "" {
				cfg.Instances = 3
			}
		}
		if cfg.Mongo != "" && cfg.MongoDocs == "" {
			fmt.Fprintln(os.Stderr, "history: -mongo needs -mongo-docs")
			os.Exit(2)
		}
		if cfg.MongoDB == "" {
			cfg.MongoDB = fmt.Sprintf("history_%d", os.Getpid())
		}
		if cfg.Dir == "" {
			d, err := os.MkdirTemp("", "history.")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(2)
			}
			cleanup = func() { os.RemoveAll(d) }
			cfg.Dir = d
		}
		cfg.KillInst = cfg.Instances - 1
		p.Mode = "single"
		if cfg.Mongo != "" {
			p.Mode = "multi"
		}
		p.Initial, p.Instances, p.KillAt = cfg.Initial, cfg.Instances, cfg.KillAt
		if p.Mode == "multi" {
			p.Restocks = cfg.Restocks
		}
		p.StaleNs = int64(stale)
		fillParams(&p)
		p.LinearTimeout = int64(linTimeout)
		fmt.Printf("history: %s mode, %d instance(s), %d clients each, initial stock %d per SKU, seed %d\n",
			p.Mode, cfg.Instances, cfg.Clients, cfg.Initial, cfg.Seed)
		var err error
		start := time.Now()
		h, err = Run(cfg, p)
		if out != "" && h != nil {
			if e := h.Save(out); e != nil {
				fmt.Fprintln(os.Stderr, "history:", e)
			}
		}
		if err != nil {
			fmt.Printf("FAIL - scenario: %v\n", err)
			for i := 0; i < cfg.Instances; i++ {
				b, _ := os.ReadFile(filepath.Join(cfg.Dir, fmt.Sprintf("inst%d.log", i)))
				fmt.Printf("--- inst%d log (tail)\n%s\n", i, tail(string(b), 15))
			}
			fmt.Println("checks: 0 passed, 1 failed")
			exit(2)
		}
		fmt.Printf("history: load + restarts took %.1f s\n", time.Since(start).Seconds())
	case "check":
		if fs.NArg() != 1 {
			usage()
		}
		var err error
		if h, err = Load(fs.Arg(0)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		// flags given explicitly override the recorded parameters
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "cache-loss-max":
				h.Params.CacheLossMax = p.CacheLossMax
			case "lease-hold-max":
				h.Params.LeaseHoldMax = p.LeaseHoldMax
			case "levels":
				h.Params.Levels = p.Levels
			case "linear-timeout":
				h.Params.LinearTimeout = int64(linTimeout)
			case "stale":
				h.Params.StaleNs = int64(stale)
			}
		})
		fillParams(&h.Params)
	default:
		usage()
	}
	Stats(os.Stdout, h)
	t0 := time.Now()
	pass, fail := Report(os.Stdout, h)
	fmt.Printf("history: checked %d requests in %.2f s\n", len(h.Ops), time.Since(t0).Seconds())
	fmt.Printf("checks: %d passed, %d failed\n", pass, fail)
	if fail > 0 {
		exit(1)
	}
	exit(0)
}

func fillParams(p *Params) {
	if p.CacheLossMax < 0 {
		p.CacheLossMax = 4096 * 3
	}
	if p.LeaseHoldMax < 0 {
		p.LeaseHoldMax = 2*((p.Initial+7)/8) + 3
	}
	if p.Levels == "" {
		p.Levels = "exact"
	}
	if p.LinearTimeout == 0 {
		p.LinearTimeout = int64(10 * time.Second)
	}
	if p.StaleNs == 0 {
		p.StaleNs = int64(time.Second)
	}
}
