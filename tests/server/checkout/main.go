// The concurrency races of tests/server/checkout_test.sh (std library only).
//
//	checkout race -url http://127.0.0.1:PORT -sku TSLA -total 150 -workers 8 -ops 200
//
// Workers (each its own X-Buyer-Id) race on one SKU: holds (ttl 200 ms or
// 300..1500 ms), confirms (full, or partial: fewer units), cancels (some
// with a concurrent confirm of the same hold, so exactly one of the two may
// win), orders, BuyFastAtomic buys, and peeks. Every peek must satisfy
// remaining+held+sold == total. At the end, once every hold has expired:
// held == 0, remaining+sold == total, sold == the units of 200-answered
// confirms + 201 orders + 200 buys; every hold's final status agrees with
// the answers its confirms and cancels got.
//
// Prints one "ok - ..." or "FAIL - ..." line per check and a "summary"
// line; exits 1 on a failure, 2 on a usage error.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

var (
	base   string
	client *http.Client
	fails  int32
)

func okf(format string, a ...any) { fmt.Printf("ok - "+format+"\n", a...) }
func badf(format string, a ...any) {
	atomic.AddInt32(&fails, 1)
	fmt.Printf("FAIL - "+format+"\n", a...)
}

type answer struct {
	code int
	body []byte
	err  error
}

func do(method, path string, body string, hdr map[string]string) answer {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, base+path, rd)
	if err != nil {
		return answer{err: err}
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return answer{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return answer{code: resp.StatusCode, body: b, err: err}
}

type level struct {
	Remaining *int64 `json:"remaining"`
	Held      *int64 `json:"held"`
	Sold      *int64 `json:"sold"`
}

func peek(sku string) (r, h, s int64, err error) {
	a := do("GET", "/api/v1/ManyStock/Cache/PeekFastAtomic/"+sku, "", nil)
	if a.err != nil {
		return 0, 0, 0, a.err
	}
	if a.code != 200 {
		return 0, 0, 0, fmt.Errorf("peek: %d %s", a.code, a.body)
	}
	var l level
	if err := json.Unmarshal(a.body, &l); err != nil || l.Remaining == nil || l.Held == nil || l.Sold == nil {
		return 0, 0, 0, fmt.Errorf("peek body %s", a.body)
	}
	return *l.Remaining, *l.Held, *l.Sold, nil
}

func errCode(b []byte) string {
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	return e.Error
}

type hold struct {
	id       string
	qty      int64
	expires  int64
	mu       sync.Mutex
	confirm  []answer // every confirm answer
	units    int64    // units asked by the confirm that got the first 200
	cancel   []answer
	confBody string
}

type stats struct {
	mu         sync.Mutex
	codes      map[string]int // "op code[error]" -> n
	orderUnits int64
	buyUnits   int64
	holds      []*hold
	peeks      int
	badPeeks   int
	unexpected []string
}

func (s *stats) count(op string, a answer) {
	key := op + " "
	if a.err != nil {
		key += "transport-error"
	} else {
		key += fmt.Sprint(a.code)
		if a.code >= 300 {
			key += " " + errCode(a.body)
		}
	}
	s.mu.Lock()
	s.codes[key]++
	s.mu.Unlock()
}

func (s *stats) unexpectedf(format string, a ...any) {
	s.mu.Lock()
	if len(s.unexpected) < 20 {
		s.unexpected = append(s.unexpected, fmt.Sprintf(format, a...))
	} else if len(s.unexpected) == 20 {
		s.unexpected = append(s.unexpected, "...")
	}
	s.mu.Unlock()
}

var holdRe = regexp.MustCompile(`^h_[0-9a-f]{32}$`)

func race(args []string) {
	fs := flag.NewFlagSet("race", flag.ExitOnError)
	url := fs.String("url", "", "server base URL")
	sku := fs.String("sku", "TSLA", "SKU")
	total := fs.Int64("total", 150, "initial stock + restocks of the SKU")
	workers := fs.Int("workers", 8, "workers")
	ops := fs.Int("ops", 200, "operations per worker")
	seed := fs.Int64("seed", time.Now().UnixNano(), "random seed")
	maxTTL := fs.Int("max-ttl-ms", 1500, "longest hold ttl")
	fs.Parse(args)
	if *url == "" {
		fmt.Fprintln(os.Stderr, "race: -url required")
		os.Exit(2)
	}
	base = strings.TrimRight(*url, "/")
	fmt.Printf("race: seed %d, %d workers x %d ops on %s (total %d)\n", *seed, *workers, *ops, *sku, *total)

	st := &stats{codes: map[string]int{}}
	var pool struct {
		sync.Mutex
		h []*hold
	}
	take := func(r *rand.Rand) *hold {
		pool.Lock()
		defer pool.Unlock()
		if len(pool.h) == 0 {
			return nil
		}
		i := r.Intn(len(pool.h))
		h := pool.h[i]
		pool.h[i] = pool.h[len(pool.h)-1]
		pool.h = pool.h[:len(pool.h)-1]
		return h
	}
	checkPeek := func() {
		r, h, s, err := peek(*sku)
		st.mu.Lock()
		st.peeks++
		st.mu.Unlock()
		if err != nil {
			st.unexpectedf("peek: %v", err)
			return
		}
		if r < 0 || h < 0 || s < 0 || r+h+s != *total {
			st.mu.Lock()
			st.badPeeks++
			st.mu.Unlock()
			st.unexpectedf("peek: remaining %d + held %d + sold %d != %d", r, h, s, *total)
		}
	}
	confirm := func(h *hold, r *rand.Rand, hdr map[string]string) {
		body, units := "", h.qty
		if h.qty > 1 && r.Intn(3) == 0 {
			units = 1 + r.Int63n(h.qty-1)
			body = fmt.Sprintf(`{"items":[{"sku":%q,"quantity":%d}]}`, *sku, units)
		}
		a := do("POST", "/api/v1/Holds/"+h.id+"/Confirm", body, hdr)
		st.count("confirm", a)
		h.mu.Lock()
		h.confirm = append(h.confirm, a)
		if a.err == nil && a.code == 200 && h.units == 0 {
			h.units = units
			h.confBody = body
		}
		h.mu.Unlock()
		if a.err == nil && a.code == 200 && r.Intn(4) == 0 {
			// a repeat with the same body answers 200 with the same body
			b := do("POST", "/api/v1/Holds/"+h.id+"/Confirm", body, hdr)
			st.count("confirm-again", b)
			if b.err != nil || b.code != 200 || !bytes.Equal(a.body, b.body) {
				st.unexpectedf("confirm again %s: %d %s (first %s)", h.id, b.code, b.body, a.body)
			}
		}
	}
	cancel := func(h *hold, hdr map[string]string) {
		a := do("POST", "/api/v1/Holds/"+h.id+"/Cancel", "", hdr)
		st.count("cancel", a)
		h.mu.Lock()
		h.cancel = append(h.cancel, a)
		h.mu.Unlock()
	}

	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewSource(*seed + int64(w)))
			hdr := map[string]string{"X-Buyer-Id": fmt.Sprintf("race-%d", w)}
			for i := 0; i < *ops; i++ {
				switch p := r.Intn(100); {
				case p < 40: // hold
					q := 1 + r.Int63n(3)
					ttl := 200
					if r.Intn(2) == 0 {
						ttl = 300 + r.Intn(*maxTTL-299)
					}
					a := do("POST", "/api/v1/Holds", fmt.Sprintf(`{"items":[{"sku":%q,"quantity":%d}],"ttl_ms":%d}`, *sku, q, ttl), hdr)
					st.count("hold", a)
					if a.err != nil {
						continue
					}
					switch {
					case a.code == 201:
						var hb struct {
							HoldID    string `json:"hold_id"`
							Status    string `json:"status"`
							ExpiresAt int64  `json:"expires_at"`
						}
						if json.Unmarshal(a.body, &hb) != nil || !holdRe.MatchString(hb.HoldID) || hb.Status != "held" {
							st.unexpectedf("hold: 201 %s", a.body)
							continue
						}
						h := &hold{id: hb.HoldID, qty: q, expires: hb.ExpiresAt}
						st.mu.Lock()
						st.holds = append(st.holds, h)
						st.mu.Unlock()
						if r.Intn(4) != 0 { // a quarter is left to expire
							pool.Lock()
							pool.h = append(pool.h, h)
							pool.Unlock()
						}
					case a.code == 409 && errCode(a.body) == "sold_out":
					default:
						st.unexpectedf("hold: %d %s", a.code, a.body)
					}
				case p < 65: // confirm, sometimes racing a cancel
					h := take(r)
					if h == nil {
						continue
					}
					if r.Intn(5) == 0 {
						var rw sync.WaitGroup
						rw.Add(1)
						go func() { defer rw.Done(); cancel(h, hdr) }()
						confirm(h, r, hdr)
						rw.Wait()
					} else {
						confirm(h, r, hdr)
					}
				case p < 80: // cancel, sometimes racing a confirm
					h := take(r)
					if h == nil {
						continue
					}
					if r.Intn(5) == 0 {
						r2 := rand.New(rand.NewSource(r.Int63()))
						var rw sync.WaitGroup
						rw.Add(1)
						go func() { defer rw.Done(); confirm(h, r2, hdr) }()
						cancel(h, hdr)
						rw.Wait()
					} else {
						cancel(h, hdr)
					}
				case p < 90: // order
					q := 1 + r.Int63n(2)
					a := do("POST", "/api/v1/Orders", fmt.Sprintf(`{"items":[{"sku":%q,"quantity":%d}]}`, *sku, q), hdr)
					st.count("order", a)
					if a.err == nil && a.code == 201 {
						atomic.AddInt64(&st.orderUnits, q)
					} else if a.err != nil || a.code != 409 || errCode(a.body) != "sold_out" {
						st.unexpectedf("order: %d %s %v", a.code, a.body, a.err)
					}
				case p < 95: // buy
					a := do("POST", "/api/v1/ManyStock/Cache/BuyFastAtomic/"+*sku, "", hdr)
					st.count("buy", a)
					if a.err == nil && a.code == 200 {
						atomic.AddInt64(&st.buyUnits, 1)
					} else if a.err != nil || a.code != 409 {
						st.unexpectedf("buy: %d %s %v", a.code, a.body, a.err)
					}
				default:
					checkPeek()
				}
				if i%10 == 0 {
					checkPeek()
				}
			}
		}(w)
	}
	wg.Wait()

	// Every answer of every confirm and cancel is one it may give.
	confirmedUnits := int64(0)
	var confirmed, cancelled, neither []*hold
	for _, h := range st.holds {
		conf200, canc200 := false, false
		for _, a := range h.confirm {
			switch {
			case a.err != nil:
				st.unexpectedf("confirm %s: %v", h.id, a.err)
			case a.code == 200:
				conf200 = true
			case a.code == 409 && (errCode(a.body) == "hold_expired" || errCode(a.body) == "hold_cancelled"):
			default:
				st.unexpectedf("confirm %s: %d %s", h.id, a.code, a.body)
			}
		}
		for _, a := range h.cancel {
			switch {
			case a.err != nil:
				st.unexpectedf("cancel %s: %v", h.id, a.err)
			case a.code == 200:
				canc200 = true
			case a.code == 409 && (errCode(a.body) == "hold_confirmed" || errCode(a.body) == "hold_expired"):
			default:
				st.unexpectedf("cancel %s: %d %s", h.id, a.code, a.body)
			}
		}
		switch {
		case conf200 && canc200:
			badf("hold %s: both its confirm and its cancel answered 200", h.id)
		case conf200:
			confirmed = append(confirmed, h)
			confirmedUnits += h.units
		case canc200:
			cancelled = append(cancelled, h)
		default:
			neither = append(neither, h)
		}
	}

	// Wait until every hold has expired (held == 0), at most max ttl + 3 s.
	deadline := time.Now().Add(time.Duration(*maxTTL)*time.Millisecond + 3*time.Second)
	var rem, held, sold int64
	var err error
	for {
		rem, held, sold, err = peek(*sku)
		if err == nil && held == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		badf("final peek: %v", err)
	} else {
		if held == 0 {
			okf("race: every hold expired or ended (held 0)")
		} else {
			badf("race: held %d long after every hold's expiry", held)
		}
		if rem+held+sold == *total {
			okf("race: final remaining %d + held %d + sold %d == %d", rem, held, sold, *total)
		} else {
			badf("race: final remaining %d + held %d + sold %d != %d", rem, held, sold, *total)
		}
		want := confirmedUnits + st.orderUnits + st.buyUnits
		if sold == want {
			okf("race: sold %d == confirmed %d + ordered %d + bought %d", sold, confirmedUnits, st.orderUnits, st.buyUnits)
		} else {
			badf("race: sold %d != confirmed %d + ordered %d + bought %d (= %d)", sold, confirmedUnits, st.orderUnits, st.buyUnits, want)
		}
	}
	if st.badPeeks == 0 && st.peeks > 0 {
		okf("race: %d peeks during the race, each remaining+held+sold == %d", st.peeks, *total)
	} else {
		badf("race: %d of %d peeks broke remaining+held+sold == %d", st.badPeeks, st.peeks, *total)
	}

	// Every hold's final status agrees with its answers.
	mism := 0
	check := func(hs []*hold, want string) {
		for _, h := range hs {
			a := do("GET", "/api/v1/Holds/"+h.id, "", nil)
			var hb struct {
				Status string `json:"status"`
			}
			if a.err != nil || a.code != 200 || json.Unmarshal(a.body, &hb) != nil || hb.Status != want {
				mism++
				if mism <= 10 {
					badf("hold %s: want status %s, got %d %s %v", h.id, want, a.code, a.body, a.err)
				}
			}
		}
	}
	check(confirmed, "confirmed")
	check(cancelled, "cancelled")
	check(neither, "expired")
	if mism == 0 {
		okf("race: %d holds: %d confirmed, %d cancelled, %d expired, as their answers said",
			len(st.holds), len(confirmed), len(cancelled), len(neither))
	} else if mism > 10 {
		badf("race: %d holds in all with a status their answers contradict", mism)
	}
	if len(st.unexpected) == 0 {
		okf("race: every answer was one of the expected ones")
	} else {
		badf("race: unexpected answers:\n  %s", strings.Join(st.unexpected, "\n  "))
	}
	keys := make([]string, 0, len(st.codes))
	for k := range st.codes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var sb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&sb, " [%s]=%d", k, st.codes[k])
	}
	fmt.Printf("summary:%s\n", sb.String())
	if len(confirmed) == 0 || len(cancelled) == 0 || len(neither) == 0 || st.orderUnits == 0 {
		badf("race: the mix did not exercise every path (confirmed %d, cancelled %d, expired %d, ordered %d units)",
			len(confirmed), len(cancelled), len(neither), st.orderUnits)
	}
}

func main() {
	client = &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, MaxConnsPerHost: 64}}
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: checkout race -url URL [-sku S -total N -workers W -ops N]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "race":
		race(os.Args[2:])
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
	if atomic.LoadInt32(&fails) > 0 {
		os.Exit(1)
	}
}
