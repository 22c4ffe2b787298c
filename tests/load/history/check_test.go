package main

// The checker on synthetic histories: correct ones (which must pass, including
// the tight cases: a 409 made legitimate only by a request in flight or an
// unanswered one, write-behind losses within the documented bound, levels
// read after the take) and wrong ones (which must be flagged: a 409 with
// plenty left, a unit sold twice, oversell, a lost acknowledged Db buy, a
// phantom sale, a lease that acknowledged more than it recorded, broken
// conservation, unexpected statuses); and, across three instances with
// restocks: a 409 within B of a restock passes, one later than B with
// plenty left fails (porcupine with the lease slack, and the 409 check), an
// oversell beyond initial + restocks fails, unknown buys and restocks are
// accepted either way.

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

var tDb = Target{"db", "OneStock:Db", "/db/buy", "/db/peek"}
var tAtomic = Target{"atomic", "OneStock:Atomic", "/a/buy", "/a/peek"}
var tMany = Target{"many", "NVDA", "/m/buy", "/m/peek"}

// builder of synthetic histories; times are in ms.
type hb struct {
	h  *History
	id int
}

func newHist(mode string, initial int64, instances int, targets ...Target) *hb {
	p := Params{Mode: mode, Initial: initial, Instances: instances, CacheLossMax: -1, LeaseHoldMax: -1}
	for i := 0; i < instances; i++ {
		p.Hosts = append(p.Hosts, fmt.Sprintf("h%d", i))
	}
	fillParams(&p)
	p.LinearTimeout = int64(5 * time.Second)
	b := &hb{h: &History{Params: p, Targets: targets}}
	for i := 0; i < instances; i++ {
		for _, t := range targets {
			b.peek("begin", i, 0, t.SKU, 0, initial, 0)
		}
	}
	return b
}

func ms(x int64) int64 { return x * int64(time.Millisecond) }

func (b *hb) peek(phase string, inst, epoch int, sku string, at, rem, sold int64) {
	b.h.Peeks = append(b.h.Peeks, Peek{Phase: phase, Instance: inst, Epoch: epoch, SKU: sku, At: ms(at), Status: 200,
		Body: fmt.Sprintf(`{"sku":"%s","remaining":%d,"sold":%d,"version":1}`, sku, rem, sold)})
}

func (b *hb) op(inst, epoch int, t Target, q, start, end int64, status int, body string) {
	b.h.Ops = append(b.h.Ops, Op{ID: b.id, Client: b.id, Instance: inst, Epoch: epoch, SKU: t.SKU, Route: t.Route,
		Qty: q, Start: ms(start), End: ms(end), Status: status, Body: body})
	b.id++
}

// ok: a 200 whose body says sold (remaining = initial - sold unless rem >= 0)
func (b *hb) ok(inst, epoch int, t Target, q, start, end, sold int64) {
	b.okRem(inst, epoch, t, q, start, end, sold, b.h.Params.Initial-sold)
}

func (b *hb) okRem(inst, epoch int, t Target, q, start, end, sold, rem int64) {
	b.op(inst, epoch, t, q, start, end, 200,
		fmt.Sprintf(`{"ok":true,"sku":"%s","quantity":%d,"remaining":%d,"sold":%d,"version":%d}`, t.SKU, q, rem, sold, sold))
}

func (b *hb) soldOut(inst, epoch int, t Target, q, start, end int64) {
	b.op(inst, epoch, t, q, start, end, 409, `{"error":"sold_out","message":"not enough stock remaining"}`)
}

func (b *hb) event(kind string, inst int, at int64) {
	b.h.Events = append(b.h.Events, Event{Kind: kind, Instance: inst, At: ms(at)})
}

// finish: the final peeks of a single-instance history, and the clean restart
func (b *hb) finish(sku string, rem, sold int64) {
	b.peek("end", 0, 0, sku, 1e6, rem, sold)
	b.peek("clean", 0, 0, sku, 1e6+1, rem, sold)
}

func results(h *History) map[string]Result {
	m := map[string]Result{}
	for _, r := range Check(h) {
		m[r.Name] = r
	}
	return m
}

func expectAllOK(t *testing.T, h *History) {
	t.Helper()
	n := 0
	for _, r := range Check(h) {
		n++
		if !r.OK {
			t.Errorf("a correct history was flagged: %s: %s", r.Name, r.Detail)
		}
	}
	if n == 0 {
		t.Fatal("no checks ran")
	}
}

// expectFail: the check named exactly @name fails (and, if given, its detail
// contains @want); every check not in @alsoMay must pass.
func expectFail(t *testing.T, h *History, name, want string, alsoMay ...string) {
	t.Helper()
	res := results(h)
	r, ok := res[name]
	if !ok {
		t.Fatalf("no check named %q; have %v", name, keys(res))
	}
	if r.OK {
		t.Errorf("%s passed, must fail: %s", name, r.Detail)
	} else if want != "" && !strings.Contains(r.Detail, want) {
		t.Errorf("%s failed with %q, want it to mention %q", name, r.Detail, want)
	}
	for n, x := range res {
		if n == name || x.OK {
			continue
		}
		allowed := false
		for _, p := range alsoMay {
			if strings.HasPrefix(n, p) {
				allowed = true
			}
		}
		if !allowed {
			t.Errorf("unexpected failure %s: %s", n, x.Detail)
		}
	}
}

func keys(m map[string]Result) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

// ---- single instance: correct histories ------------------------------------

func TestSequentialSellOut(t *testing.T) {
	b := newHist("single", 10, 1, tAtomic)
	b.ok(0, 0, tAtomic, 3, 0, 1, 3)
	b.ok(0, 0, tAtomic, 3, 2, 3, 6)
	b.ok(0, 0, tAtomic, 3, 4, 5, 9)
	b.soldOut(0, 0, tAtomic, 2, 6, 7) // 1 left < 2
	b.ok(0, 0, tAtomic, 1, 8, 9, 10)
	b.soldOut(0, 0, tAtomic, 1, 10, 11)
	b.finish(tAtomic.SKU, 0, 10)
	expectAllOK(t, b.h)
}

// Concurrent buyers; the 409 ends before the 200 that took the last units
// does: legitimate only because that 200 was in flight during it.
func TestConcurrent409FromInFlightBuy(t *testing.T) {
	b := newHist("single", 4, 1, tDb)
	b.ok(0, 0, tDb, 3, 10, 50, 3)   // takes at ~20, answers at 50
	b.soldOut(0, 0, tDb, 2, 15, 30) // 1 left at ~25
	b.ok(0, 0, tDb, 1, 60, 70, 4)
	b.soldOut(0, 0, tDb, 1, 80, 90)
	b.finish(tDb.SKU, 0, 4)
	expectAllOK(t, b.h)
}

// Overlapping 200s answered out of order.
func TestConcurrentOutOfOrderAnswers(t *testing.T) {
	b := newHist("single", 6, 1, tMany)
	b.ok(0, 0, tMany, 2, 0, 100, 6) // took last, answered last
	b.ok(0, 0, tMany, 3, 5, 20, 3)
	b.ok(0, 0, tMany, 1, 10, 30, 4)
	b.soldOut(0, 0, tMany, 1, 40, 50) // in flight: the q=2 still
	b.finish(tMany.SKU, 0, 6)
	expectAllOK(t, b.h)
}

// An unanswered request may have taken its units: a 409 after it is fine.
func TestUnansweredMayHaveTaken(t *testing.T) {
	b := newHist("single", 3, 1, tAtomic)
	b.op(0, 0, tAtomic, 3, 0, 20, 0, "") // no answer: the kill
	b.soldOut(0, 0, tAtomic, 1, 5, 6)
	b.event("kill", 0, 15)
	b.event("restart", 0, 30)
	b.peek("begin", 0, 1, tAtomic.SKU, 31, 0, 3) // it had taken them
	b.soldOut(0, 1, tAtomic, 1, 40, 41)
	b.finish(tAtomic.SKU, 0, 3)
	expectAllOK(t, b.h)
}

// kill -9 and restart: every Db 200 survives; write-behind loses 2 units of
// Atomic, within the documented window (and flagged when the bound is 0).
func TestCrash(t *testing.T) {
	build := func(lossMax int64) *History {
		b := newHist("single", 10, 1, tDb, tAtomic)
		b.h.Params.CacheLossMax = lossMax
		fillParams(&b.h.Params)
		b.ok(0, 0, tDb, 2, 0, 10, 2)
		b.ok(0, 0, tDb, 3, 5, 12, 5)
		b.op(0, 0, tDb, 1, 14, 20, 0, "") // in flight at the kill: applied, not answered
		b.ok(0, 0, tAtomic, 2, 0, 10, 2)
		b.ok(0, 0, tAtomic, 2, 11, 12, 4)
		b.event("kill", 0, 15)
		b.event("restart", 0, 30)
		b.peek("begin", 0, 1, tDb.SKU, 31, 4, 6)
		b.peek("begin", 0, 1, tAtomic.SKU, 31, 8, 2) // lost the second buy
		b.ok(0, 1, tDb, 4, 40, 41, 10)
		b.ok(0, 1, tAtomic, 3, 40, 41, 5)
		b.ok(0, 1, tAtomic, 3, 42, 43, 8)
		b.ok(0, 1, tAtomic, 2, 44, 45, 10)
		b.finish(tDb.SKU, 0, 10)
		b.finish(tAtomic.SKU, 0, 10)
		return b.h
	}
	expectAllOK(t, build(-1))
	expectFail(t, build(0), "kill -9: OneStock:Atomic epoch 0", "2 acknowledged units not counted")
}

// levels=after: a take-then-read server reports a level that may include
// later takes; two 200s may show the same level. Not an exact server.
func TestLevelsReadAfterTake(t *testing.T) {
	build := func(levels string) *History {
		b := newHist("single", 10, 1, tAtomic)
		b.h.Params.Levels = levels
		b.ok(0, 0, tAtomic, 1, 0, 100, 3) // took unit 1, read after the other's take
		b.ok(0, 0, tAtomic, 2, 10, 90, 3) // took units 2..3
		b.ok(0, 0, tAtomic, 3, 120, 130, 6)
		b.ok(0, 0, tAtomic, 3, 140, 150, 9)
		b.ok(0, 0, tAtomic, 1, 160, 170, 10)
		b.finish(tAtomic.SKU, 0, 10)
		return b.h
	}
	expectAllOK(t, build("after"))
	expectFail(t, build("exact"), "units: OneStock:Atomic epoch 0", "unit 3 owned twice", "linearizable:")
}

// ---- single instance: wrong histories ---------------------------------------

// The server answers 409 with plenty left: 90 of 100 units provably remain.
func TestFlags409WithPlentyLeft(t *testing.T) {
	b := newHist("single", 100, 1, tAtomic)
	for i := int64(0); i < 5; i++ {
		b.ok(0, 0, tAtomic, 2, 10*i, 10*i+5, 2*(i+1))
	}
	b.soldOut(0, 0, tAtomic, 1, 60, 61)
	for i := int64(0); i < 30; i++ {
		b.ok(0, 0, tAtomic, 3, 100+10*i, 100+10*i+5, 10+3*(i+1))
	}
	b.finish(tAtomic.SKU, 0, 100)
	expectFail(t, b.h, "409: OneStock:Atomic epoch 0", "at least 90 units were provably still in stock",
		"linearizable:")
	// porcupine agrees
	if r := results(b.h)["linearizable: OneStock:Atomic epoch 0"]; r.OK {
		t.Errorf("porcupine did not flag the 409: %s", r.Detail)
	}
}

// A 409 while requests are in flight, but far too few to explain it.
func TestFlags409WithFewInFlight(t *testing.T) {
	b := newHist("single", 10, 1, tDb)
	b.ok(0, 0, tDb, 3, 0, 100, 3)
	b.ok(0, 0, tDb, 3, 0, 100, 6)
	b.soldOut(0, 0, tDb, 3, 10, 20) // at most 6 taken, 4 left >= 3
	b.ok(0, 0, tDb, 3, 110, 120, 9)
	b.ok(0, 0, tDb, 1, 130, 140, 10)
	b.finish(tDb.SKU, 0, 10)
	expectFail(t, b.h, "409: OneStock:Db epoch 0", "at least 4 units", "linearizable:")
}

func TestFlagsUnitSoldTwice(t *testing.T) {
	b := newHist("single", 10, 1, tDb)
	b.ok(0, 0, tDb, 2, 0, 10, 2)
	b.ok(0, 0, tDb, 2, 20, 30, 4)
	b.ok(0, 0, tDb, 1, 40, 50, 4) // unit 4 again, sequentially: wrong with any levels
	b.finish(tDb.SKU, 5, 5)
	expectFail(t, b.h, "units: OneStock:Db epoch 0", "unit 4 owned twice", "linearizable:", "totals:", "sold out:")
	b.h.Params.Levels = "after"
	expectFail(t, b.h, "units: OneStock:Db epoch 0", "some unit was sold twice", "linearizable:", "totals:", "sold out:")
}

// 11 units acknowledged out of 10: bodies stay in range, the totals do not.
func TestFlagsOversell(t *testing.T) {
	b := newHist("single", 10, 1, tMany)
	b.ok(0, 0, tMany, 3, 0, 10, 3)
	b.ok(0, 0, tMany, 3, 20, 30, 6)
	b.ok(0, 0, tMany, 3, 40, 50, 9)
	b.ok(0, 0, tMany, 2, 60, 70, 10) // owns 9..10: 9 twice
	b.finish(tMany.SKU, 0, 10)
	expectFail(t, b.h, "units: NVDA epoch 0", "unit 9 owned twice", "linearizable:", "totals:")
	if r := results(b.h)["totals: NVDA"]; r.OK {
		t.Errorf("totals passed with 11 acknowledged of 10: %s", r.Detail)
	}
}

// A Db buy acknowledged before the kill is gone after the restart.
func TestFlagsLostDbAck(t *testing.T) {
	b := newHist("single", 10, 1, tDb)
	b.ok(0, 0, tDb, 2, 0, 10, 2)
	b.ok(0, 0, tDb, 2, 11, 12, 4)
	b.event("kill", 0, 15)
	b.event("restart", 0, 30)
	b.peek("begin", 0, 1, tDb.SKU, 31, 8, 2)
	b.ok(0, 1, tDb, 3, 40, 41, 5)
	b.ok(0, 1, tDb, 3, 42, 43, 8)
	b.ok(0, 1, tDb, 2, 44, 45, 10)
	b.finish(tDb.SKU, 0, 10)
	expectFail(t, b.h, "kill -9: OneStock:Db epoch 0", "sold 2 >= 4", "totals:")
}

// After the restart more is sold than anybody asked for.
func TestFlagsPhantomSale(t *testing.T) {
	b := newHist("single", 10, 1, tAtomic)
	b.ok(0, 0, tAtomic, 2, 0, 10, 2)
	b.event("kill", 0, 15)
	b.event("restart", 0, 30)
	b.peek("begin", 0, 1, tAtomic.SKU, 31, 5, 5)
	b.ok(0, 1, tAtomic, 3, 40, 41, 8)
	b.ok(0, 1, tAtomic, 2, 42, 43, 10)
	b.finish(tAtomic.SKU, 0, 10)
	expectFail(t, b.h, "kill -9: OneStock:Atomic epoch 0", "more than the 0 before plus 2 acknowledged")
}

func TestFlagsUnexpectedStatuses(t *testing.T) {
	b := newHist("single", 10, 1, tAtomic)
	b.op(0, 0, tAtomic, 1, 0, 1, 503, `{"error":"busy"}`)
	b.op(0, 0, tAtomic, 1, 2, 3, 0, "") // no answer and no kill
	b.ok(0, 0, tAtomic, 3, 4, 5, 3)
	b.ok(0, 0, tAtomic, 3, 6, 7, 6)
	b.ok(0, 0, tAtomic, 3, 8, 9, 9)
	b.ok(0, 0, tAtomic, 1, 10, 11, 10)
	b.finish(tAtomic.SKU, 0, 10)
	expectFail(t, b.h, "statuses: OneStock:Atomic", "2 unexpected")
}

func TestFlagsBadBodyAndUncleanRestart(t *testing.T) {
	b := newHist("single", 10, 1, tAtomic)
	b.okRem(0, 0, tAtomic, 3, 0, 1, 3, 6) // 3 + 6 != 10
	b.ok(0, 0, tAtomic, 3, 2, 3, 6)
	b.ok(0, 0, tAtomic, 3, 4, 5, 9)
	b.ok(0, 0, tAtomic, 1, 6, 7, 10)
	b.peek("end", 0, 0, tAtomic.SKU, 1e6, 0, 10)
	b.peek("clean", 0, 0, tAtomic.SKU, 1e6+1, 1, 9)
	res := results(b.h)
	if res["bodies: OneStock:Atomic"].OK {
		t.Error("bodies passed with remaining+sold != initial")
	}
	if res["clean restart: OneStock:Atomic"].OK {
		t.Error("clean restart passed with a changed level")
	}
}

// ---- three instances ----------------------------------------------------------

// 3 instances, a lease SKU of 600 units: each instance got a lease of 200
// and sold it; instance 2 was killed once and its ledger recorded.
func leaseHist() (*hb, *Doc) {
	b := newHist("multi", 600, 3, tMany)
	for j := 0; j < 3; j++ {
		for k := int64(0); k < 100; k++ {
			b.okRem(j, 0, tMany, 2, 10*k, 10*k+5, 2, 0) // lease views: only remaining+sold <= initial
		}
	}
	b.soldOut(0, 0, tMany, 1, 1000, 1001)
	b.soldOut(1, 0, tMany, 3, 1002, 1003)
	d := &Doc{SKU: "NVDA", Stock: 0, Sold: 600, Leases: map[string]Lease{
		"h0": {Granted: 200, Sold: 200}, "h1": {Granted: 200, Sold: 200}, "h2": {Granted: 200, Sold: 200}}}
	b.h.Docs = map[string]*Doc{"NVDA": d}
	for j := 0; j < 3; j++ {
		b.peek("end", j, 0, "NVDA", 2000, 0, 600)
	}
	return b, d
}

func TestLeasesGood(t *testing.T) {
	b, _ := leaseHist()
	expectAllOK(t, b.h)
}

// An instance acknowledged more than its lease recorded: units sold twice.
func TestFlagsLeaseAckedBeyondRecord(t *testing.T) {
	b, d := leaseHist()
	d.Leases["h1"] = Lease{Granted: 200, Sold: 190, Returned: 10}
	d.Stock, d.Sold = 10, 590
	expectFail(t, b.h, "leases: NVDA", "BAD h1: acknowledged 200 <= lease sold 190", "conservation:")
}

func TestFlagsLeaseConservation(t *testing.T) {
	b, d := leaseHist()
	d.Stock = 5 // 5 units appeared
	expectFail(t, b.h, "conservation: NVDA", "stock 5 + sold 600")
}

// A lease-route 409 while 60 of 600 units were not taken by any request
// begun before its end: flagged when the other instances' leases can hold
// at most 22 units each then (their grants, less their 200s completed by
// then), accepted when instance 1 held a big lease (granted 400, of which it
// returned 200 later). And one at the very start: flagged.
func TestLease409(t *testing.T) {
	build := func(granted1, at int64) *History {
		b := newHist("multi", 600, 3, tMany)
		b.soldOut(0, 0, tMany, 1, at, at+1)
		for j := 0; j < 3; j++ {
			for k := int64(0); k < 100; k++ {
				b.okRem(j, 0, tMany, 2, 10+10*k, 10+10*k+5, 2, 0)
			}
		}
		b.h.Docs = map[string]*Doc{"NVDA": {SKU: "NVDA", Stock: 0, Sold: 600, Leases: map[string]Lease{
			"h0": {Granted: 200, Sold: 200}, "h1": {Granted: granted1, Sold: 200, Returned: granted1 - 200},
			"h2": {Granted: 200, Sold: 200}}}}
		for j := 0; j < 3; j++ {
			b.peek("end", j, 0, "NVDA", 2000, 0, 600)
		}
		return b.h
	}
	expectFail(t, build(200, 900), "409: NVDA (all instances)", "at least 16 units", "linearizable: NVDA")
	expectAllOK(t, build(400, 900))
	// at the start: the others may hold min(2*75+3, 200) = 153 each
	expectFail(t, build(200, 0), "409: NVDA (all instances)", "at least 294 units", "linearizable: NVDA")
	// porcupine agrees (the same slack)
	for _, at := range []int64{900, 0} {
		if r := results(build(200, at))["linearizable: NVDA (all instances)"]; r.OK {
			t.Errorf("porcupine did not flag the 409 at %d: %s", at, r.Detail)
		}
	}
}

// Db across instances: global units, a lost acknowledged buy in MongoDB.
func TestMultiDb(t *testing.T) {
	build := func(docSold int64) *History {
		b := newHist("multi", 10, 3, tDb)
		b.ok(0, 0, tDb, 3, 0, 10, 3)
		b.ok(1, 0, tDb, 3, 1, 12, 6)
		b.ok(2, 0, tDb, 3, 2, 8, 9) // answered first, took last
		b.op(2, 0, tDb, 1, 9, 20, 0, "")
		b.event("kill", 2, 15)
		b.event("restart", 2, 30)
		b.soldOut(0, 0, tDb, 2, 11, 13)
		b.h.Docs = map[string]*Doc{"OneStock:Db": {SKU: "OneStock:Db", Stock: 10 - docSold, Sold: docSold}}
		for j := 0; j < 3; j++ {
			b.peek("end", j, 0, tDb.SKU, 2000, 10-docSold, docSold)
		}
		return b.h
	}
	expectAllOK(t, build(10)) // the unanswered one was applied
	expectAllOK(t, build(9))
	expectFail(t, build(8), "mongo: OneStock:Db", "acknowledged 9 <= sold", "peeks:")
}

func TestParseDocs(t *testing.T) {
	out := `{ "_id" : "NVDA", "stock" : 3, "sold" : 497, "version" : 88, "lost" : 0, "leases" : { "hist0" : { "granted" : 200, "sold" : 190, "returned" : 10, "expires" : { "$date" : "2026-12-01T20:20:22.779Z" }, "reclaimed" : false } } }
{ "_id" : "NVDA#12" }
{ "_id" : "OneStock:Db", "stock" : { "$numberLong" : "5" }, "sold" : 495, "version" : 500 }
`
	docs, err := ParseDocs([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 2 {
		t.Fatalf("want 2 SKU documents, got %d", len(docs))
	}
	n := docs["NVDA"]
	if n.Stock != 3 || n.Sold != 497 || n.Leases["hist0"].Granted != 200 || n.Leases["hist0"].Returned != 10 {
		t.Errorf("NVDA parsed as %+v", n)
	}
	if docs["OneStock:Db"].Stock != 5 {
		t.Errorf("$numberLong not read: %+v", docs["OneStock:Db"])
	}
}

// ---- three instances: restocks, stale 409s, unknown outcomes ----------------

func (b *hb) restock(inst int, sku string, n, start, end int64, status int) {
	b.h.Restocks = append(b.h.Restocks, Op{ID: b.id, Client: -1, Instance: inst, SKU: sku, Route: "restock", Qty: n,
		Start: ms(start), End: ms(end), Status: status,
		Body: fmt.Sprintf(`{"sku":"%s","remaining":%d,"sold":0,"version":1}`, sku, n)})
	b.id++
}

// A lease SKU of 60 units sold out by instance 0; instance 0 restocks 40
// at 400..420 ms; a 409 on instance 2 at @late ms; then instance 1 sells
// the 40 (from 1600 ms). Before 420 + B (1 s) the 409 may come from a view
// that has not seen the restock: legal. After it, 40 units are in the pool
// and the others can hold at most min(H, granted) = 29 of them: flagged.
func restockHist(late int64) *History {
	b := newHist("multi", 60, 3, tMany)
	for k := int64(0); k < 30; k++ {
		b.okRem(0, 0, tMany, 2, 10*k, 10*k+5, 2, 0)
	}
	b.soldOut(1, 0, tMany, 1, 300, 301)
	b.restock(0, tMany.SKU, 40, 400, 420, 200)
	b.soldOut(2, 0, tMany, 1, late, late+1)
	for k := int64(0); k < 20; k++ {
		b.okRem(1, 0, tMany, 2, 1600+10*k, 1600+10*k+5, 2, 0)
	}
	b.soldOut(2, 0, tMany, 3, 2000, 2001)
	b.h.Docs = map[string]*Doc{"NVDA": {SKU: "NVDA", Stock: 0, Sold: 100, Leases: map[string]Lease{
		"h0": {Granted: 60, Sold: 60}, "h1": {Granted: 40, Sold: 40}}}}
	for j := 0; j < 3; j++ {
		b.peek("end", j, 0, "NVDA", 3000, 0, 100)
	}
	return b.h
}

func TestRestockStale409WithinB(t *testing.T) {
	h := restockHist(900) // 480 ms after the restock's answer
	expectAllOK(t, h)
	r := results(h)["linearizable: NVDA (all instances)"]
	if !strings.Contains(r.Detail, "1 restocks") {
		t.Errorf("the restock is not in the model: %s", r.Detail)
	}
	// with B = 100 ms the same 409 is too stale
	h.Params.StaleNs = int64(100 * time.Millisecond)
	if r := results(h)["linearizable: NVDA (all instances)"]; r.OK {
		t.Errorf("a 409 480 ms after a restock passed with B = 100 ms: %s", r.Detail)
	}
}

func TestFlagsRestock409BeyondB(t *testing.T) {
	h := restockHist(1500) // 1080 ms after the restock's answer: 40 units in, 29 out of reach
	expectFail(t, h, "linearizable: NVDA (all instances)", "NOT linearizable", "409: NVDA")
	if r := results(h)["409: NVDA (all instances)"]; r.OK {
		t.Errorf("the 409 allowance check did not flag it: %s", r.Detail)
	}
	// with B = 2 s it is within the bound
	h.Params.StaleNs = int64(2 * time.Second)
	expectAllOK(t, h)
}

// 102 units acknowledged of 60 + a restock of 40.
func TestFlagsLeaseOversellWithRestock(t *testing.T) {
	h := restockHist(900)
	h.Ops = append(h.Ops, Op{ID: 9999, Client: 9999, Instance: 2, SKU: "NVDA", Route: "many", Qty: 2, Start: ms(1800),
		End: ms(1810), Status: 200, Body: `{"ok":true,"sku":"NVDA","quantity":2,"remaining":0,"sold":2,"version":2}`})
	expectFail(t, h, "linearizable: NVDA (all instances)", "NOT linearizable", "leases:", "conservation:", "peeks:")
}

// A restock that answered 503 (or nothing at a kill): the units may be in
// or not; every model accepts both (the 503 itself is flagged by
// "statuses: restocks", like a buy's 503 by "statuses").
func TestRestockUnknownOutcome(t *testing.T) {
	for _, status := range []int{503, 0} {
		for _, applied := range []bool{true, false} {
			b := newHist("multi", 10, 3, tDb)
			b.ok(0, 0, tDb, 3, 0, 10, 3)
			b.ok(1, 0, tDb, 3, 1, 12, 6)
			b.ok(2, 0, tDb, 3, 2, 8, 9)
			b.ok(2, 0, tDb, 1, 13, 14, 10)
			b.restock(1, tDb.SKU, 5, 20, 30, status)
			if status == 0 {
				b.event("kill", 1, 25)
				b.event("restart", 1, 40)
			}
			total := int64(10)
			if applied {
				total = 15
				b.okRem(0, 0, tDb, 5, 3000, 3010, 15, 0)
			}
			b.soldOut(2, 0, tDb, 1, 3100, 3101)
			b.h.Docs = map[string]*Doc{"OneStock:Db": {SKU: "OneStock:Db", Stock: 0, Sold: total}}
			for j := 0; j < 3; j++ {
				b.peek("end", j, 0, tDb.SKU, 4000, 0, total)
			}
			if status == 503 {
				expectFail(t, b.h, "statuses: restocks", "1 unexpected")
			} else {
				expectAllOK(t, b.h)
			}
		}
	}
}

// Db with a restock: strict (no lease slack), a 409 may name a state up to
// B old: a 409 480 ms after the restock passes, one 1090 ms after it with
// 5 units in the document fails; an oversell beyond initial + restock fails.
func TestDbRestock(t *testing.T) {
	build := func(late int64, extra bool) *History {
		b := newHist("multi", 10, 3, tDb)
		b.ok(0, 0, tDb, 3, 0, 10, 3)
		b.ok(1, 0, tDb, 3, 1, 12, 6)
		b.ok(2, 0, tDb, 3, 2, 8, 9)
		b.ok(2, 0, tDb, 1, 13, 14, 10)
		b.soldOut(0, 0, tDb, 1, 20, 21)
		b.restock(1, tDb.SKU, 5, 100, 110, 200)
		b.soldOut(0, 0, tDb, 1, late, late+1)
		b.okRem(2, 0, tDb, 3, 1500, 1510, 13, 2)
		b.okRem(1, 0, tDb, 2, 1520, 1530, 15, 0)
		sold := int64(15)
		if extra {
			b.okRem(0, 0, tDb, 1, 1540, 1550, 16, 0)
			sold = 16
		}
		b.soldOut(2, 0, tDb, 1, 1600, 1601)
		b.h.Docs = map[string]*Doc{"OneStock:Db": {SKU: "OneStock:Db", Stock: 15 - sold, Sold: sold}}
		for j := 0; j < 3; j++ {
			b.peek("end", j, 0, tDb.SKU, 4000, 15-sold, sold)
		}
		return b.h
	}
	expectAllOK(t, build(590, false))
	expectFail(t, build(1200, false), "linearizable: OneStock:Db (all instances)", "NOT linearizable",
		"409: OneStock:Db")
	if r := results(build(1200, false))["409: OneStock:Db (all instances)"]; r.OK {
		t.Errorf("the 409 check did not flag it: %s", r.Detail)
	}
	expectFail(t, build(590, true), "linearizable: OneStock:Db (all instances)", "NOT linearizable",
		"units:", "bodies:", "mongo:", "peeks:")
}

// Db, a stale 409 (found by CI on 4 December): instance 1 restocks, instance
// 2 sells from the restock at once, and instance 0 still answers 409 from
// its cached sold-out document before the bus tells it. That is "sold out
// as of a version at most B old": a 409 300 ms after the restock passes; one
// 1300 ms after it, with 4 units in the document since 210 ms, fails.
func TestDbStale409AfterRestockSold(t *testing.T) {
	build := func(late int64) *History {
		b := newHist("multi", 10, 3, tDb)
		b.ok(0, 0, tDb, 5, 0, 10, 5)
		b.ok(1, 0, tDb, 5, 1, 12, 10)
		b.soldOut(0, 0, tDb, 1, 20, 21)
		b.restock(1, tDb.SKU, 5, 100, 110, 200)
		b.okRem(2, 0, tDb, 1, 200, 210, 11, 4)
		b.soldOut(0, 0, tDb, 1, late, late+1)
		b.okRem(2, 0, tDb, 4, 2000, 2010, 15, 0)
		b.h.Docs = map[string]*Doc{"OneStock:Db": {SKU: "OneStock:Db", Stock: 0, Sold: 15}}
		for j := 0; j < 3; j++ {
			b.peek("end", j, 0, tDb.SKU, 4000, 0, 15)
		}
		return b.h
	}
	expectAllOK(t, build(300))
	expectFail(t, build(1300), "linearizable: OneStock:Db (all instances)", "NOT linearizable",
		"409: OneStock:Db")
}

// An unanswered lease buy (its instance killed during it) may have taken
// its units or not: both continuations pass; and one that cannot have
// (more sold than the stock either way) fails.
func TestLeaseUnknownBuyEitherWay(t *testing.T) {
	build := func(applied bool, extraSold int64) *History {
		b := newHist("multi", 30, 3, tMany)
		b.op(0, 0, tMany, 3, 0, 20, 0, "") // in flight at the kill
		b.event("kill", 0, 15)
		b.event("restart", 0, 30)
		sold1 := int64(27)
		if !applied {
			sold1 = 30
		}
		sold1 += extraSold
		for k := int64(0); k < sold1; k++ {
			b.okRem(1, 0, tMany, 1, 100+10*k, 100+10*k+5, 1, 0)
		}
		b.soldOut(2, 0, tMany, 1, 2000, 2001)
		b.soldOut(0, 1, tMany, 1, 2000, 2001)
		var s0 int64
		if applied {
			s0 = 3
		}
		b.h.Docs = map[string]*Doc{"NVDA": {SKU: "NVDA", Stock: 30 - s0 - sold1, Sold: s0 + sold1,
			Leases: map[string]Lease{"h0": {Granted: 5, Sold: s0, Returned: 5 - s0}, "h1": {Granted: sold1, Sold: sold1}}}}
		for j := 0; j < 3; j++ {
			b.peek("end", j, 0, "NVDA", 3000, 0, s0+sold1)
		}
		return b.h
	}
	expectAllOK(t, build(true, 0))
	expectAllOK(t, build(false, 0))
	expectFail(t, build(false, 1), "linearizable: NVDA (all instances)", "NOT linearizable", "conservation:",
		"peeks:")
}
