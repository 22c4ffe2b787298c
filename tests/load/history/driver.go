package main

// Drives the real server: starts its instances, runs the clients over every
// Buy route, kills one instance with SIGKILL mid-load and restarts it on the
// same data dir, (several instances) restocks each SKU through Admin/Stock
// once the crowd has sold it out, while the clients go on buying on every
// instance, -restocks times per SKU, runs on until sold out, and records
// everything in a History.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type Config struct {
	Server     string // demo-server binary
	Dir        string // temp dir: data dirs and logs live under it
	Instances  int
	Initial    int64
	Clients    int // per instance
	Threads    int
	MaxLoad    time.Duration // hard bound on the load phase
	KillAt     float64       // kill -9 once this fraction of all stock is acknowledged (0: never)
	KillInst   int
	Think      time.Duration // mean pause between a client's requests
	Seed       int64
	Mongo      string // URI: multi mode
	MongoDB    string
	Redis      string
	MongoDocs  string // tests/services/mongo_docs binary
	LeaseBlock int64
	Restocks   int     // sold out -> restock cycles per SKU (multi)
	RestockMin float64 // each restock adds a random fraction of Initial in [RestockMin, RestockMax]
	RestockMax float64
	Token      string // STOCK_ADMIN_TOKEN of every instance
	ExtraArgs  []string
	Verbose    bool
}

// the bearer token the driver gives its instances (Admin restocks)
const adminToken = "history-admin-token-0123456789"

// restockState: per SKU, the driver's restock cycles.
type restockState struct {
	done     int   // restocks sent and answered (any outcome)
	inflight bool  // one is on its way
	lastEnd  int64 // end of the last one (d.now())
	applied  bool  // the last one answered 200
}

type instance struct {
	idx     int
	host    string
	dir     string
	log     string
	mu      sync.Mutex
	cmd     *exec.Cmd
	waitErr chan error
	port    int
	epoch   int
	up      bool
	upCh    chan struct{} // closed while up
}

type driver struct {
	cfg    Config
	t0     time.Time
	insts  []*instance
	h      *History
	mu     sync.Mutex // h.Ops, h.Peeks, h.Events
	acked  atomic.Int64
	nextID atomic.Int64
	// restocks (multi): guarded by mu
	rst      map[string]*restockState
	lastSale map[string]int64 // end of the latest 200 per SKU
	rwg      sync.WaitGroup   // restocks in flight
	rrng     *rand.Rand
}

func (d *driver) now() int64 { return int64(time.Since(d.t0)) }

func (d *driver) logf(format string, a ...any) {
	if d.cfg.Verbose {
		fmt.Fprintf(os.Stderr, "history: %6.3fs "+format+"\n", append([]any{time.Since(d.t0).Seconds()}, a...)...)
	}
}

// oneShot: probes and peeks close their connection, so no idle keep-alive
// connection holds up a server's shutdown (civetweb waits for it).
var oneShot = &http.Transport{DisableKeepAlives: true}

func freePort() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 20000 + rand.Intn(30000)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (in *instance) base() string { return fmt.Sprintf("http://127.0.0.1:%d", in.port) }

// start runs the instance's process (same data dir every time) and waits
// until /health/ready answers 200. A lost race for the port is retried on
// another one.
func (d *driver) start(in *instance) error {
	in.mu.Lock()
	if in.port == 0 {
		in.port = freePort()
	}
	in.mu.Unlock()
	for try := 0; try < 8; try++ {
		args := []string{"--listen", fmt.Sprintf("127.0.0.1:%d", in.port), "--data-dir", in.dir,
			"--threads", fmt.Sprint(d.cfg.Threads), "--initial-stock", fmt.Sprint(d.cfg.Initial)}
		if d.cfg.Mongo != "" {
			args = append(args, "--mongo", d.cfg.Mongo, "--mongo-db", d.cfg.MongoDB, "--host-id", in.host,
				"--lease-block", fmt.Sprint(d.cfg.LeaseBlock))
			if d.cfg.Redis != "" {
				args = append(args, "--redis", d.cfg.Redis)
			}
		}
		args = append(args, d.cfg.ExtraArgs...)
		lf, err := os.OpenFile(in.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return err
		}
		cmd := exec.Command(d.cfg.Server, args...)
		cmd.Stdout, cmd.Stderr = lf, lf
		cmd.Env = append(os.Environ(), "STOCK_HOST_ID="+in.host, "STOCK_ADMIN_TOKEN="+d.cfg.Token)
		if err := cmd.Start(); err != nil {
			lf.Close()
			return err
		}
		lf.Close()
		wc := make(chan error, 1)
		go func() { wc <- cmd.Wait() }()
		in.cmd, in.waitErr = cmd, wc
		deadline := time.Now().Add(30 * time.Second)
		hc := &http.Client{Timeout: time.Second, Transport: oneShot}
		for time.Now().Before(deadline) {
			select {
			case <-wc:
				goto died
			default:
			}
			if r, err := hc.Get(in.base() + "/health/ready"); err == nil {
				io.Copy(io.Discard, r.Body)
				r.Body.Close()
				if r.StatusCode == 200 {
					return nil
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		cmd.Process.Kill()
		<-wc
		return fmt.Errorf("instance %d not ready within 30 s (log %s)", in.idx, in.log)
	died:
		b, _ := os.ReadFile(in.log)
		if !bytes.Contains(b, []byte("cannot listen")) {
			return fmt.Errorf("instance %d exited at start; log %s:\n%s", in.idx, in.log, tail(string(b), 20))
		}
		in.mu.Lock()
		in.port = freePort()
		in.mu.Unlock()
	}
	return fmt.Errorf("instance %d: no port to listen on", in.idx)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (d *driver) event(kind string, i int) {
	d.mu.Lock()
	d.h.Events = append(d.h.Events, Event{Kind: kind, Instance: i, At: d.now()})
	d.mu.Unlock()
}

// down marks an instance down (new requests wait) without waiting for the
// requests in flight: they meet the kill.
func (in *instance) down() {
	in.mu.Lock()
	in.up = false
	in.upCh = make(chan struct{})
	in.mu.Unlock()
}

func (in *instance) markUp() {
	in.mu.Lock()
	in.up = true
	close(in.upCh)
	in.mu.Unlock()
}

// kill9 sends SIGKILL and reaps the process; @kind is the event recorded
// ("kill": mid-load, checked; "stop": the end of the run).
func (d *driver) kill9(in *instance, kind string) {
	in.down()
	d.event(kind, in.idx)
	in.cmd.Process.Signal(syscall.SIGKILL)
	<-in.waitErr
}

// term sends SIGTERM and waits (drain, final snapshot, leases returned).
func (d *driver) term(in *instance) error {
	in.down()
	d.event("term", in.idx)
	in.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-in.waitErr:
		if err != nil {
			return fmt.Errorf("instance %d exited with %v on SIGTERM", in.idx, err)
		}
		return nil
	case <-time.After(20 * time.Second):
		in.cmd.Process.Kill()
		<-in.waitErr
		return fmt.Errorf("instance %d did not exit within 20 s of SIGTERM", in.idx)
	}
}

// restart starts the instance again on its data dir as a new epoch and
// takes the "begin" peeks before any client may buy from it.
func (d *driver) restart(in *instance, phase string) error {
	if err := d.start(in); err != nil {
		return err
	}
	in.mu.Lock()
	in.epoch++
	in.mu.Unlock()
	d.event("restart", in.idx)
	d.peekAll(in, phase)
	return nil
}

func (d *driver) peekAll(in *instance, phase string) {
	hc := &http.Client{Timeout: 5 * time.Second, Transport: oneShot}
	for _, t := range Targets {
		p := Peek{Phase: phase, Instance: in.idx, Epoch: in.epoch, SKU: t.SKU, At: d.now()}
		if r, err := hc.Get(in.base() + t.Peek); err == nil {
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			p.Status, p.Body = r.StatusCode, string(b)
		} else {
			p.Body = err.Error()
		}
		d.mu.Lock()
		d.h.Peeks = append(d.h.Peeks, p)
		d.mu.Unlock()
	}
}

// client: one keep-alive connection to one instance, random route and
// quantity 1..3 per request, until ctx is done.
func (d *driver) client(ctx context.Context, id int, in *instance, wg *sync.WaitGroup) {
	defer wg.Done()
	rng := rand.New(rand.NewSource(d.cfg.Seed*1000 + int64(id)))
	tr := &http.Transport{MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for ctx.Err() == nil {
		in.mu.Lock()
		up, ch, epoch, base := in.up, in.upCh, in.epoch, in.base()
		in.mu.Unlock()
		if !up {
			select {
			case <-ch:
			case <-ctx.Done():
				return
			}
			continue
		}
		t := Targets[rng.Intn(len(Targets))]
		q := int64(1 + rng.Intn(3))
		op := Op{ID: int(d.nextID.Add(1) - 1), Client: id, Instance: in.idx, Epoch: epoch, SKU: t.SKU,
			Route: t.Route, Qty: q}
		req, _ := http.NewRequest("POST", base+t.Buy, strings.NewReader(fmt.Sprintf(`{"quantity":%d}`, q)))
		req.Header.Set("Content-Type", "application/json")
		op.Start = d.now()
		r, err := hc.Do(req)
		if err == nil {
			b, rerr := io.ReadAll(r.Body)
			r.Body.Close()
			op.End = d.now()
			if rerr != nil {
				op.Err = rerr.Error() // status seen, body cut: the outcome is not known
			} else {
				op.Status, op.Body = r.StatusCode, string(b)
			}
		} else {
			op.End = d.now()
			op.Err = err.Error()
		}
		if op.Status == 200 {
			d.acked.Add(q)
		}
		d.mu.Lock()
		d.h.Ops = append(d.h.Ops, op)
		if op.Status == 200 && d.lastSale != nil && op.End > d.lastSale[op.SKU] {
			d.lastSale[op.SKU] = op.End
		}
		d.mu.Unlock()
		if op.Status == 0 {
			time.Sleep(5 * time.Millisecond) // the instance is going down: wait for it
		} else if d.cfg.Think > 0 {
			time.Sleep(time.Duration(rng.Int63n(int64(2 * d.cfg.Think))))
		}
	}
}

// soldOut: every instance's peek of every SKU shows 0 remaining (on several
// instances a peek may lag; then the load just ends a little early).
func (d *driver) soldOut() bool {
	m, all := d.soldOutSKUs()
	if !all {
		return false
	}
	for _, t := range Targets {
		if !m[t.SKU] {
			return false
		}
	}
	return true
}

// soldOutSKUs: per SKU, whether every instance that is up peeks 0
// remaining; @all: every instance was up and answered.
func (d *driver) soldOutSKUs() (map[string]bool, bool) {
	hc := &http.Client{Timeout: 2 * time.Second, Transport: oneShot}
	m := map[string]bool{}
	for _, t := range Targets {
		m[t.SKU] = true
	}
	all := true
	for _, in := range d.insts {
		in.mu.Lock()
		up, base := in.up, in.base()
		in.mu.Unlock()
		if !up {
			all = false
			continue
		}
		for _, t := range Targets {
			if !m[t.SKU] {
				continue
			}
			r, err := hc.Get(base + t.Peek)
			if err != nil {
				all = false
				m[t.SKU] = false
				continue
			}
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			if l := ParseLevel(string(b)); l == nil || v(l.Remaining) != 0 {
				m[t.SKU] = false
			}
		}
	}
	return m, all
}

// maybeRestock: every SKU sold out (on every instance up) that has
// restock cycles left, no restock in flight and, since its last applied
// restock answered, a 200 answered (so a peek lagging behind that restock
// does not start the next one), is restocked by a random 10-30%
// (-restock-min/max) of the initial stock from one instance that is up
// (rotating), in the background.
func (d *driver) maybeRestock(soldOut map[string]bool) {
	for ti, t := range Targets {
		if !soldOut[t.SKU] {
			continue
		}
		d.mu.Lock()
		st := d.rst[t.SKU]
		ready := st.done < d.cfg.Restocks && !st.inflight &&
			(!st.applied || d.lastSale[t.SKU] > st.lastEnd)
		if ready {
			st.inflight = true
		}
		lo, hi := d.cfg.RestockMin, d.cfg.RestockMax
		f := lo + (hi-lo)*d.rrng.Float64()
		d.mu.Unlock()
		if !ready {
			continue
		}
		n := int64(f * float64(d.cfg.Initial))
		if n < 1 {
			n = 1
		}
		var in *instance
		for k := 0; k < len(d.insts); k++ {
			c := d.insts[(ti+st.done+k)%len(d.insts)]
			c.mu.Lock()
			up := c.up
			c.mu.Unlock()
			if up {
				in = c
				break
			}
		}
		if in == nil {
			d.mu.Lock()
			st.inflight = false
			d.mu.Unlock()
			continue
		}
		d.rwg.Add(1)
		go d.restock(t, in, n, st)
	}
}

// restock: POST /api/v1/Admin/Stock/{sku} {"restock": n} with the token;
// recorded in h.Restocks like a buy (Route "restock", Qty n).
func (d *driver) restock(t Target, in *instance, n int64, st *restockState) {
	defer d.rwg.Done()
	in.mu.Lock()
	epoch, base := in.epoch, in.base()
	in.mu.Unlock()
	op := Op{ID: int(d.nextID.Add(1) - 1), Client: -1, Instance: in.idx, Epoch: epoch, SKU: t.SKU, Route: "restock",
		Qty: n}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: oneShot}
	req, _ := http.NewRequest("POST", base+"/api/v1/Admin/Stock/"+t.SKU, strings.NewReader(fmt.Sprintf(`{"restock":%d}`, n)))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+d.cfg.Token)
	op.Start = d.now()
	r, err := hc.Do(req)
	if err == nil {
		b, rerr := io.ReadAll(r.Body)
		r.Body.Close()
		op.End = d.now()
		if rerr != nil {
			op.Err = rerr.Error()
		} else {
			op.Status, op.Body = r.StatusCode, string(b)
		}
	} else {
		op.End = d.now()
		op.Err = err.Error()
	}
	d.logf("restock %s +%d on instance %d: %d %s%s", t.SKU, n, in.idx, op.Status, strings.TrimSpace(op.Body), op.Err)
	d.mu.Lock()
	d.h.Restocks = append(d.h.Restocks, op)
	st.done++
	st.inflight = false
	st.lastEnd = op.End
	st.applied = op.Status == 200
	d.mu.Unlock()
}

// restocksDone: every SKU had its restock cycles (none in flight).
func (d *driver) restocksDone() bool {
	if d.cfg.Mongo == "" || d.cfg.Restocks <= 0 {
		return true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, st := range d.rst {
		if st.done < d.cfg.Restocks || st.inflight {
			return false
		}
	}
	return true
}

// Run does the whole scenario and returns the history (and an error if the
// scenario itself could not be carried out).
func Run(cfg Config, p Params) (*History, error) {
	d := &driver{cfg: cfg, t0: time.Now(), h: &History{Params: p, Targets: Targets}, rst: map[string]*restockState{},
		lastSale: map[string]int64{}, rrng: rand.New(rand.NewSource(cfg.Seed*7 + 1))}
	if d.cfg.Token == "" {
		d.cfg.Token = adminToken
	}
	for _, t := range Targets {
		d.rst[t.SKU] = &restockState{}
	}
	for i := 0; i < cfg.Instances; i++ {
		in := &instance{idx: i, host: fmt.Sprintf("hist%d", i), dir: filepath.Join(cfg.Dir, fmt.Sprintf("data%d", i)),
			log: filepath.Join(cfg.Dir, fmt.Sprintf("inst%d.log", i)), upCh: make(chan struct{})}
		os.MkdirAll(in.dir, 0o755)
		d.insts = append(d.insts, in)
		d.h.Params.Hosts = append(d.h.Params.Hosts, in.host)
	}
	defer func() {
		for _, in := range d.insts {
			if in.cmd != nil && in.cmd.ProcessState == nil {
				in.cmd.Process.Kill()
			}
		}
	}()
	for _, in := range d.insts {
		if err := d.start(in); err != nil {
			return d.h, err
		}
		d.event("start", in.idx)
		d.peekAll(in, "begin")
		in.markUp()
	}
	d.logf("%d instance(s) up, initial stock %d per SKU", cfg.Instances, cfg.Initial)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i, in := range d.insts {
		for c := 0; c < cfg.Clients; c++ {
			wg.Add(1)
			go d.client(ctx, i*cfg.Clients+c, in, &wg)
		}
	}
	total := cfg.Initial * int64(len(Targets))
	killed := cfg.KillAt <= 0
	restocking := cfg.Mongo != "" && cfg.Restocks > 0
	var soldAt, lastPoll time.Time
	var err error
	deadline := time.Now().Add(cfg.MaxLoad)
	for time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		if !killed && float64(d.acked.Load()) >= cfg.KillAt*float64(total) {
			killed = true
			in := d.insts[cfg.KillInst]
			d.logf("kill -9 instance %d (%d units acknowledged)", in.idx, d.acked.Load())
			d.kill9(in, "kill")
			if err = d.restart(in, "begin"); err != nil {
				break
			}
			in.markUp()
			d.logf("instance %d restarted", in.idx)
		}
		if soldAt.IsZero() && (killed || restocking) && time.Since(lastPoll) > 50*time.Millisecond {
			lastPoll = time.Now()
			m, all := d.soldOutSKUs()
			if restocking {
				d.maybeRestock(m)
			}
			every := all
			for _, t := range Targets {
				every = every && m[t.SKU]
			}
			if killed && every && d.restocksDone() {
				soldAt = time.Now()
				d.logf("sold out (every peek shows 0 remaining)")
			}
		}
		if !soldAt.IsZero() && time.Since(soldAt) > 200*time.Millisecond {
			break
		}
	}
	cancel()
	wg.Wait()
	d.rwg.Wait()
	if err != nil {
		return d.h, err
	}
	if restocking {
		for _, t := range Targets {
			if st := d.rst[t.SKU]; st.done < cfg.Restocks {
				d.h.Notes = append(d.h.Notes, fmt.Sprintf("%s: %d of %d restocks within %v", t.SKU, st.done,
					cfg.Restocks, cfg.MaxLoad))
			}
		}
	}
	if soldAt.IsZero() {
		d.h.Notes = append(d.h.Notes, fmt.Sprintf("not every SKU sold out within %v", cfg.MaxLoad))
	}
	d.logf("load over: %d requests, %d units acknowledged", len(d.h.Ops), d.acked.Load())
	if cfg.Mongo == "" {
		in := d.insts[0]
		d.peekAll(in, "end")
		if err := d.term(in); err != nil {
			return d.h, err
		}
		d.logf("SIGTERM: exited")
		if err := d.restart(in, "clean"); err != nil {
			return d.h, err
		}
		d.logf("restarted on the same data dir")
		d.kill9(in, "stop") // checked already; a second SIGTERM would cost ~2 s more
		return d.h, nil
	}
	// Several instances: peeks converge through records, Redis and the poll
	// (--poll-ms); poll them for up to 10 s (sanitizer builds on a loaded
	// machine are slow) and keep the last round ("end").
	for i := 0; i < 100; i++ {
		time.Sleep(100 * time.Millisecond)
		if d.peeksCover() {
			break
		}
	}
	for _, in := range d.insts {
		d.peekAll(in, "end")
	}
	// SIGTERM all at once (each takes ~2 s): they record and return leases
	errs := make(chan error, len(d.insts))
	for _, in := range d.insts {
		go func(in *instance) { errs <- d.term(in) }(in)
	}
	for range d.insts {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	d.logf("SIGTERM: every instance exited")
	if err != nil {
		return d.h, err
	}
	docs, err := readDocs(cfg.MongoDocs, cfg.Mongo, cfg.MongoDB)
	d.h.Docs = docs
	return d.h, err
}

// peeksCover: every instance's peek of every SKU shows at least the units
// all instances acknowledged (what the "peeks" check asks).
func (d *driver) peeksCover() bool {
	acked := map[string]int64{}
	d.mu.Lock()
	for _, op := range d.h.Ops {
		if op.Status == 200 {
			acked[op.SKU] += op.Qty
		}
	}
	d.mu.Unlock()
	hc := &http.Client{Timeout: 2 * time.Second, Transport: oneShot}
	for _, in := range d.insts {
		for _, t := range Targets {
			r, err := hc.Get(in.base() + t.Peek)
			if err != nil {
				return false
			}
			b, _ := io.ReadAll(r.Body)
			r.Body.Close()
			l := ParseLevel(string(b))
			if l == nil || v(l.Sold) < acked[t.SKU] {
				return false
			}
		}
	}
	return true
}
