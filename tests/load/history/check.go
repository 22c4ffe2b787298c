package main

// The checks. Every one is stated per SKU; "epoch" is one process lifetime of
// an instance (a kill -9 and restart starts the next one). A request is
//
//	ok        200 with a well-formed body: it took its quantity q
//	sold out  409
//	unknown   no answer (connection cut by the kill, timeout), a 5xx, or a
//	          200 whose body does not parse: it may or may not have taken q
//	          (every bound below counts it whichever way is generous to the
//	          server)
//	error     another 4xx: never changes stock (docs/server.md); the tool
//	          sends only valid requests, so it is flagged by "statuses"
//
// Single instance (the embedded store), for each SKU:
//
//	statuses   every answer is 200 or 409; only requests in flight when the
//	           instance was killed go unanswered
//	bodies     a 200 says ok, its SKU and quantity, remaining+sold == initial,
//	           q <= sold <= initial; a 409 says sold_out
//	units      (levels=exact) a 200 with quantity q and sold=S owns units
//	           S-q+1..S: in each epoch these intervals lie above the epoch's
//	           starting sold level and no two of them share a unit
//	           (levels=after) for every X, the 200s with sold <= X carry at
//	           most X - start units (what a take-then-read server satisfies)
//	linearizable  porcupine, a counter model per SKU and epoch, starting
//	           from the epoch's peeked level: ok needs stock >= q and (exact)
//	           reports stock-q after it, sold out needs stock < q, unknown
//	           may apply or not
//	409        no 409 while stock >= q provably remained throughout it: at
//	           its end at most start - U units can be left, where U sums q
//	           over the ok and unknown requests of the epoch that started
//	           before the 409 ended (those completed before it and those in
//	           flight during it); 409 is flagged iff start - U >= q
//	crash      the epoch ended by kill -9: the restarted server's sold R
//	           (peeked before any new buy) is <= start + ok + unknown units
//	           (nothing sold that nobody asked for), and for Db/Buy >= the
//	           highest sold any of its 200s reported and >= start + ok units
//	           (every 200 survives); for the write-behind routes the units
//	           of 200s not counted after the restart are reported and must
//	           be <= -cache-loss-max (docs: "the sales of the last group
//	           commit window")
//	totals     the final peeks: remaining+sold == initial, sold <= initial,
//	           and the last epoch's ok units <= its sold growth <= ok+unknown
//	           units (acknowledged <= sold <= initial); for Db/Buy also the
//	           ok units of all epochs <= the final sold
//	sold out   the final peek shows 0 remaining
//	clean restart  SIGTERM, start again on the same data dir: the peeks are
//	           those before it
//
// Three instances (-mongo, leases). The driver also restocks each SKU
// (POST Admin/Stock/{sku} {"restock": n}) every time the crowd sold it out;
// a restock is ok (200), unknown (no answer, 5xx: applied or not) or error.
// "initial" below then means initial + the restocks: R_ok (answered 200)
// <= what was added <= R_all (every restock not refused). B (-stale, 1 s)
// is the staleness bound: a change that grows a pool (a restock, a lease
// returned) reaches every instance within B, so a 409 may be answered from
// a view up to B old.
//
//	restocks   the scenario restocked every SKU at least once (-restocks
//	           cycles planned); every restock answered 200 (or went
//	           unanswered at the kill)
//
// OneStock:Db (MongoDB is the authority, one findAndModify per batch, each
// buyer's body its own position in it):
//
//	statuses, bodies, units, 409: as above, over the requests of all
//	           instances together, one epoch (MongoDB outlives any
//	           instance); a 200 body's remaining+sold lies between initial +
//	           the restocks answered before it began and initial + those
//	           begun before it ended; the 409 check's start is initial +
//	           the restocks answered 200 more than B before the 409 began
//	linearizable  porcupine, strict: state = the document's stock, ok(q)
//	           needs state >= q (and reports state-q), 409(q) needs
//	           state < q at some point of [call - B, end] (it may come
//	           from a cached sold-out document the bus invalidates within
//	           B, while other instances already sell what a restock
//	           added: sold out as of a version at most B old); a
//	           restock(n) adds n somewhere in [call, end] (a 200 comes
//	           from the document itself), an unknown one may add n or
//	           nothing any time after its call
//	mongo      the document after all instances stopped: stock+sold ==
//	           initial (+ restocks in [R_ok, R_all]), ok units <= sold <=
//	           ok+unknown units
//	peeks      every instance's peek shows sold >= the acknowledged units
//
// the lease-backed SKUs (Cache/*, ManyStock): a body's level is the
// instance's view (the document as last seen plus its own unrecorded sales),
// so units cannot be read from bodies; instead
//
//	statuses, bodies (remaining+sold <= initial, sold <= initial)
//	linearizable  porcupine across all instances, the state being the
//	           SKU's global remaining stock (pool + every lease's unsold
//	           units), from initial: ok(q) needs state >= q and leaves
//	           state-q (a body's remaining is a view: not checked); a
//	           409(q) from instance i says i's counter and the pool as of a
//	           version i had seen were both < q, while other leases may
//	           hold units, so it needs state < q + S with
//	             S = (q-1) + sum_{j != i} min(H(t) [x2 if j was killed or
//	                 came back less than B before], granted_j - units of
//	                 j's 200s completed before the 409 began)
//	             H(t) = -lease-hold-max (2*ceil(initial/8) + 3: two grants
//	                 of at most 1/8 of the pool each, plus a quantity;
//	                 docs/server.md) + 2*ceil(R(t)/8), R(t) the units of
//	                 the restocks begun before the 409 ended
//	           (leaseSlack has the argument); restocks and unknown
//	           outcomes as for Db. Not for 409s if an instance was down
//	           more than 8 s (its lease may have been reclaimed)
//	leases     per instance j, its lease in the document after all stopped:
//	           ok_j <= leases.j.sold <= ok_j + unknown_j (every 200 of j —
//	           including those before its kill -9, recorded from its ledger
//	           at restart — is in its lease, and nothing else is), and
//	           granted - sold - returned == 0 (nothing held after SIGTERM)
//	conservation  stock + sold + lost + held == initial (+ restocks in
//	           [R_ok, R_all]), sold == the sum of
//	           the leases' sold, sum of ok <= sold <= initial. Leases are
//	           disjoint blocks of the pool (one conditional update each), so
//	           with these no unit is sold twice across instances
//	409        as above with an allowance: a 409 on instance i means i's
//	           counter and the pool (not the global stock) were both < q;
//	           units out of i's reach at the 409's end t are i's counter
//	           (<= q-1) and what each other instance j's lease held at t:
//	           hold_j(t) = min(-lease-hold-max (two grants of at most 1/8
//	           of the pool each, plus a quantity: docs/server.md),
//	           leases.j.granted - units of j's 200s completed before t):
//	           the S of "linearizable" (t: the 409's start), start as for
//	           Db (restocked units count once B has passed since their
//	           answer). Flagged iff start - U - S >= q. Sound
//	           only if no lease was reclaimed (its units go to lost): the
//	           killed instance is back long before --lease-ms (10 s); if it
//	           was down more than 8 s the check is not made
//	peeks      as for Db
import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

type Result struct {
	Name   string
	OK     bool
	Detail string
}

const (
	kOK = iota
	kSoldOut
	kUnknown
	kError
)

type rec struct {
	op   *Op
	kind int
	lvl  *Level
}

func (r rec) sold() int64 { return v(r.lvl.Sold) }
func (r rec) rem() int64  { return v(r.lvl.Remaining) }

func classify(op *Op) rec {
	r := rec{op: op}
	switch {
	case op.Status == 200:
		l := ParseLevel(op.Body)
		if l == nil || l.Sold == nil || l.Remaining == nil || l.Quantity == nil {
			r.kind = kUnknown
		} else {
			r.kind, r.lvl = kOK, l
		}
	case op.Status == 409:
		r.kind = kSoldOut
	case op.Status == 0 || op.Status >= 500:
		r.kind = kUnknown
	default:
		r.kind = kError
	}
	return r
}

type checker struct {
	h     *History
	p     Params
	res   []Result
	recs  map[string][]rec // by SKU, in start order
	begin map[[2]int]map[string]*Level
	end   map[int]map[string]*Level // by instance: the "end" peek
	clean map[string]*Level
	// kill time of (instance, epoch), if that epoch ended with a kill
	killAt map[[2]int]int64
	// restart time after that kill
	backAt map[[2]int]int64
	// the Admin restocks by SKU, in start order (kind: kOK for a 200,
	// kUnknown for no answer or a 5xx, kError otherwise)
	rst map[string][]rec
}

func (c *checker) add(name string, ok bool, format string, a ...any) {
	c.res = append(c.res, Result{name, ok, fmt.Sprintf(format, a...)})
}

// Check runs every check of the history's mode.
func Check(h *History) []Result {
	c := &checker{h: h, p: h.Params, recs: map[string][]rec{}, begin: map[[2]int]map[string]*Level{},
		end: map[int]map[string]*Level{}, clean: map[string]*Level{}, killAt: map[[2]int]int64{},
		backAt: map[[2]int]int64{}, rst: map[string][]rec{}}
	for i := range h.Ops {
		r := classify(&h.Ops[i])
		c.recs[r.op.SKU] = append(c.recs[r.op.SKU], r)
	}
	for _, rs := range c.recs {
		sort.SliceStable(rs, func(i, j int) bool { return rs[i].op.Start < rs[j].op.Start })
	}
	for i := range h.Restocks {
		op := &h.Restocks[i]
		r := rec{op: op, kind: kError}
		switch {
		case op.Status == 200:
			r.kind = kOK
		case op.Status == 0 || op.Status >= 500:
			r.kind = kUnknown
		}
		c.rst[op.SKU] = append(c.rst[op.SKU], r)
	}
	for _, rs := range c.rst {
		sort.SliceStable(rs, func(i, j int) bool { return rs[i].op.Start < rs[j].op.Start })
	}
	for _, p := range h.Peeks {
		l := ParseLevel(p.Body)
		if p.Status != 200 || l == nil || l.Sold == nil || l.Remaining == nil {
			l = nil
		}
		switch p.Phase {
		case "begin":
			k := [2]int{p.Instance, p.Epoch}
			if c.begin[k] == nil {
				c.begin[k] = map[string]*Level{}
			}
			c.begin[k][p.SKU] = l
		case "end":
			if c.end[p.Instance] == nil {
				c.end[p.Instance] = map[string]*Level{}
			}
			c.end[p.Instance][p.SKU] = l
		case "clean":
			c.clean[p.SKU] = l
		}
	}
	epoch := map[int]int{}
	for _, e := range h.Events {
		switch e.Kind {
		case "kill":
			c.killAt[[2]int{e.Instance, epoch[e.Instance]}] = e.At
		case "restart":
			c.backAt[[2]int{e.Instance, epoch[e.Instance]}] = e.At
			epoch[e.Instance]++
		}
	}
	if h.Params.KillAt > 0 {
		kills := 0
		for _, e := range h.Events {
			if e.Kind == "kill" {
				kills++
			}
		}
		c.add("scenario: kill -9 mid-load", kills > 0, "%d instance(s) killed once %.0f%% of the stock was "+
			"acknowledged, and restarted", kills, 100*h.Params.KillAt)
	}
	if h.Params.Mode == "multi" {
		c.multi()
	} else {
		c.single()
	}
	return c.res
}

// Report prints one line per check; returns the counts.
func Report(w io.Writer, h *History) (pass, fail int) {
	for _, n := range h.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	for _, r := range Check(h) {
		if r.OK {
			pass++
			fmt.Fprintf(w, "ok - %s: %s\n", r.Name, r.Detail)
		} else {
			fail++
			fmt.Fprintf(w, "FAIL - %s: %s\n", r.Name, r.Detail)
		}
	}
	return
}

// targets: those of the history (a synthetic one may have only a few).
func (c *checker) targets() []Target {
	if len(c.h.Targets) > 0 {
		return c.h.Targets
	}
	return Targets
}

func (c *checker) skus() []string {
	var s []string
	for _, t := range c.targets() {
		s = append(s, t.SKU)
	}
	return s
}

func (c *checker) routeOf(sku string) string {
	for _, t := range c.targets() {
		if t.SKU == sku {
			return t.Route
		}
	}
	return ""
}

func opStr(o *Op) string {
	return fmt.Sprintf("op #%d (inst %d epoch %d, q=%d, %.3f..%.3fs, status %d %s%s)", o.ID, o.Instance, o.Epoch,
		o.Qty, float64(o.Start)/1e9, float64(o.End)/1e9, o.Status, strings.TrimSpace(o.Body), o.Err)
}

// statuses: only 200 and 409; unanswered only when the instance was killed
// during the request.
func (c *checker) statuses(sku string, rs []rec) {
	counts := map[int]int{}
	atKill := 0
	var bad []string
	for _, r := range rs {
		counts[r.op.Status]++
		switch {
		case r.op.Status == 200 || r.op.Status == 409:
		case r.op.Status == 0:
			if k, ok := c.killAt[[2]int{r.op.Instance, r.op.Epoch}]; ok && r.op.End >= k {
				atKill++
			} else {
				bad = append(bad, opStr(r.op))
			}
		default:
			bad = append(bad, opStr(r.op))
		}
	}
	detail := fmt.Sprintf("%d requests: %d x 200, %d x 409, %d unanswered at the kill", len(rs), counts[200],
		counts[409], atKill)
	if len(bad) > 0 {
		detail += fmt.Sprintf("; %d unexpected, first: %s", len(bad), bad[0])
	}
	c.add("statuses: "+sku, len(bad) == 0, "%s", detail)
}

// bodies: the 200s' and 409s' bodies. exact: remaining+sold == initial
// (single instance, or Db on MongoDB); else <= (a lease view). With
// restocks "initial" is the SKU's total at the time: exact, it lies between
// initial + the restocks answered 200 before the buy began and initial +
// every restock begun before it ended (any outcome); else <= the latter.
func (c *checker) bodies(sku string, rs []rec, exact bool) {
	restocked := len(c.rst[sku]) > 0
	n := 0
	var bad []string
	for _, r := range rs {
		switch {
		case r.op.Status == 200 && r.kind != kOK:
			bad = append(bad, "unparsable 200 body: "+opStr(r.op))
		case r.kind == kOK:
			n++
			l := r.lvl
			s, rem := v(l.Sold), v(l.Remaining)
			lo := c.p.Initial + c.restocked(sku, func(x rec) bool { return x.kind == kOK && x.op.End < r.op.Start })
			hi := c.p.Initial + c.restocked(sku, func(x rec) bool { return x.kind != kError && x.op.Start < r.op.End })
			why := ""
			switch {
			case l.OK == nil || !*l.OK:
				why = "ok is not true"
			case l.SKU != sku:
				why = "sku " + l.SKU
			case v(l.Quantity) != r.op.Qty:
				why = fmt.Sprintf("quantity %d", v(l.Quantity))
			case s < r.op.Qty || s > hi || rem < 0:
				why = fmt.Sprintf("sold < quantity or > the total %d", hi)
			case exact && lo == hi && s+rem != lo:
				why = fmt.Sprintf("remaining+sold = %d != %d", s+rem, lo)
			case exact && (s+rem < lo || s+rem > hi):
				why = fmt.Sprintf("remaining+sold = %d not in [%d, %d] (initial + restocks)", s+rem, lo, hi)
			case !exact && s+rem > hi:
				why = fmt.Sprintf("remaining+sold = %d > %d", s+rem, hi)
			}
			if why != "" {
				bad = append(bad, why+": "+opStr(r.op))
			}
		case r.kind == kSoldOut:
			n++
			if l := ParseLevel(r.op.Body); l == nil || l.Error != "sold_out" {
				bad = append(bad, "409 without error sold_out: "+opStr(r.op))
			}
		}
	}
	detail := fmt.Sprintf("%d bodies well-formed", n)
	switch {
	case exact && restocked:
		detail += ", remaining+sold == initial + the restocks applied (within the restocks' windows)"
	case exact:
		detail += ", remaining+sold == initial"
	case restocked:
		detail += ", remaining+sold <= initial + the restocks begun"
	default:
		detail += ", remaining+sold <= initial"
	}
	if len(bad) > 0 {
		detail = fmt.Sprintf("%d bad, first: %s", len(bad), bad[0])
	}
	c.add("bodies: "+sku, len(bad) == 0, "%s", detail)
}

// units: no unit owned by two 200s (levels=exact), or the prefix condition
// (levels=after). @base is the sold level the requests started from, @max
// the most units there can be (initial + every restock).
func (c *checker) units(name string, rs []rec, base, max int64) {
	var ok []rec
	for _, r := range rs {
		if r.kind == kOK {
			ok = append(ok, r)
		}
	}
	sort.SliceStable(ok, func(i, j int) bool { return ok[i].sold() < ok[j].sold() })
	var total int64
	if c.p.Levels == "after" {
		// for every X: units of 200s with sold <= X fit in (base, X]
		for i := 0; i < len(ok); i++ {
			total += ok[i].op.Qty
			if i+1 < len(ok) && ok[i+1].sold() == ok[i].sold() {
				continue
			}
			if x := ok[i].sold(); total > x-base || x > max {
				c.add(name, false, "the 200s reporting sold <= %d carry %d units, more than the %d above the start (%d): "+
					"some unit was sold twice; last: %s", x, total, x-base, base, opStr(ok[i].op))
				return
			}
		}
		c.add(name, true, "%d 200s carry %d units; for every level X those reporting sold <= X fit in (%d, X] "+
			"(levels=after)", len(ok), total, base)
		return
	}
	prev := base
	var prevOp *Op
	for _, r := range ok {
		lo, hi := r.sold()-r.op.Qty+1, r.sold()
		if lo <= prev {
			if prevOp == nil {
				c.add(name, false, "%s owns units %d..%d, at or below the starting level %d", opStr(r.op), lo, hi, base)
			} else {
				c.add(name, false, "unit %d owned twice: by %s and by %s", prev, opStr(prevOp), opStr(r.op))
			}
			return
		}
		if hi > max {
			c.add(name, false, "%s owns units %d..%d, beyond the total %d", opStr(r.op), lo, hi, max)
			return
		}
		total += r.op.Qty
		prev, prevOp = hi, r.op
	}
	c.add(name, true, "%d 200s own %d distinct units in (%d, %d]", len(ok), total, base, max)
}

// soldOut409: see the file comment. @start(r) is the stock known to be in
// (initial plus the restocks answered 200 more than B before r began: r
// cannot have missed them) before r's requests began, @allow the units that
// may be out of reach of a 409 (held by leases) at its end.
func (c *checker) soldOut409(name string, rs []rec, startOf func(r rec) int64, allow func(r rec) int64) {
	type iv struct{ start, q int64 }
	var taken []iv
	for _, r := range rs {
		if r.kind == kOK || r.kind == kUnknown || r.kind == kError {
			taken = append(taken, iv{r.op.Start, r.op.Qty})
		}
	}
	sort.Slice(taken, func(i, j int) bool { return taken[i].start < taken[j].start })
	prefix := make([]int64, len(taken)+1)
	for i, t := range taken {
		prefix[i+1] = prefix[i] + t.q
	}
	n := 0
	worst := int64(math.MinInt64)
	var worstOp *Op
	for _, r := range rs {
		if r.kind != kSoldOut {
			continue
		}
		n++
		// requests started at or before the 409's end
		k := sort.Search(len(taken), func(i int) bool { return taken[i].start > r.op.End })
		out := allow(r)
		start := startOf(r)
		left := start - prefix[k] - out // at least this many units were still in reach at its end
		if left-r.op.Qty > worst {
			worst, worstOp = left-r.op.Qty, r.op
		}
		if left >= r.op.Qty {
			c.add(name, false, "%s: at its end at least %d units were provably still in stock (start %d, at most %d "+
				"taken by the requests begun before its end, at most %d out of reach)", opStr(r.op), left, start, prefix[k],
				out)
			return
		}
	}
	if n == 0 {
		c.add(name, true, "no 409")
		return
	}
	c.add(name, true, "%d 409s, each when fewer than its quantity can have been left (closest: %s, %d units short)",
		n, opStr(worstOp), -worst)
}

// linearizable: porcupine on a counter. The state is the SKU's global
// remaining stock (single instance or Db: the counter / the document's
// stock; lease-backed: the pool plus every lease's unsold units). A buy(q)
// that answered 200 needs state >= q and leaves state-q; a 409 needs
// state < q + Slack (Slack 0: the strict counter); an unknown outcome (no
// answer, a 5xx, a 200 without a parsable body) may have applied or not and
// may take effect any time after its call (its return is after every other
// op); a restock(n) that answered 200 adds n, somewhere between its call and
// its end + B (a 409 may come from a view up to B stale); an unknown one may
// add n or nothing, any time after its call; one refused (4xx) adds nothing.
type linIn struct {
	Q       int64
	Restock bool
	Slack   int64
}
type linOut struct {
	Kind int
	Rem  int64
}

// how a 200's reported remaining is checked against the model
const (
	remExact  = iota // == state - q
	remAtMost        // <= state - q (levels read after the take, no restocks)
	remIgnore        // not at all (a lease view, or levels=after with restocks)
)

func counterModel(start int64, remMode int) porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Init: func() []interface{} { return []interface{}{start} },
		Step: func(st, in, out interface{}) []interface{} {
			s, i, o := st.(int64), in.(linIn), out.(linOut)
			q := i.Q
			if i.Restock {
				switch o.Kind {
				case kOK:
					return []interface{}{s + q}
				case kUnknown:
					return []interface{}{s, s + q}
				}
				return []interface{}{s}
			}
			switch o.Kind {
			case kOK:
				if s >= q && (remMode == remIgnore || o.Rem == s-q || (remMode == remAtMost && o.Rem <= s-q)) {
					return []interface{}{s - q}
				}
				return nil
			case kSoldOut:
				if s < q+i.Slack {
					return []interface{}{s}
				}
				return nil
			case kError:
				return []interface{}{s}
			default: // unknown: applied or not
				if s >= q {
					return []interface{}{s, s - q}
				}
				return []interface{}{s}
			}
		},
		Equal: func(a, b interface{}) bool { return a.(int64) == b.(int64) },
		DescribeOperation: func(in, out interface{}) string {
			i, o := in.(linIn), out.(linOut)
			if i.Restock {
				if o.Kind == kOK {
					return fmt.Sprintf("restock(%d) -> 200", i.Q)
				}
				return fmt.Sprintf("restock(%d) -> ?", i.Q)
			}
			switch o.Kind {
			case kOK:
				return fmt.Sprintf("buy(%d) -> 200 remaining %d", i.Q, o.Rem)
			case kSoldOut:
				if i.Slack > 0 {
					return fmt.Sprintf("buy(%d) -> 409 (slack %d)", i.Q, i.Slack)
				}
				return fmt.Sprintf("buy(%d) -> 409", i.Q)
			}
			return fmt.Sprintf("buy(%d) -> ?", i.Q)
		},
		DescribeState: func(st interface{}) string { return fmt.Sprintf("%d left", st.(int64)) },
	}
	return nm.ToModel()
}

// linearizable: @rs the buys, @rst the restocks of one partition, @slack
// the 409 slack of each buy (nil: 0), @stale409 where the staleness bound B
// goes: to the 409s (true: a 409's call moves back by B, "sold out as of a
// version at most B old") or to the restocks (false: a restock's effect may
// land up to B after its end), @what how the model is described in the line.
func (c *checker) linearizable(name string, rs, rst []rec, start int64, remMode int, slack func(rec) int64,
	stale409 bool, what string) {
	var ops []porcupine.Operation
	for _, r := range rs {
		in := linIn{Q: r.op.Qty}
		if r.kind == kSoldOut && slack != nil {
			in.Slack = slack(r)
		}
		o := porcupine.Operation{ClientId: r.op.Client, Input: in, Call: r.op.Start, Return: r.op.End}
		if r.kind == kSoldOut && stale409 {
			o.Call -= c.p.StaleNs
		}
		out := linOut{Kind: r.kind}
		if r.kind == kOK {
			out.Rem = r.rem()
		}
		if r.kind == kUnknown {
			o.Return = math.MaxInt64 // its effect, if any, may land any time later
		}
		o.Output = out
		ops = append(ops, o)
	}
	for i, r := range rst {
		o := porcupine.Operation{ClientId: 1<<20 + i, Input: linIn{Q: r.op.Qty, Restock: true}, Call: r.op.Start,
			Return: r.op.End, Output: linOut{Kind: r.kind}}
		switch r.kind {
		case kOK:
			if !stale409 {
				o.Return = r.op.End + c.p.StaleNs
			}
		case kUnknown:
			o.Return = math.MaxInt64
		}
		ops = append(ops, o)
	}
	if len(ops) == 0 {
		c.add(name, true, "no requests")
		return
	}
	if len(rst) > 0 && !stale409 {
		what += fmt.Sprintf(", %d restocks each adding n between its call and its end + B (%v)", len(rst),
			time.Duration(c.p.StaleNs))
	} else if len(rst) > 0 {
		what += fmt.Sprintf(", %d restocks each adding n between its call and its end, B %v", len(rst),
			time.Duration(c.p.StaleNs))
	}
	t0 := time.Now()
	res, info := porcupine.CheckOperationsVerbose(counterModel(start, remMode), ops, time.Duration(c.p.LinearTimeout))
	took := time.Since(t0).Seconds()
	switch res {
	case porcupine.Ok:
		c.add(name, true, "%d operations linearizable on a counter from %d%s (porcupine, %.2f s)", len(ops), start,
			what, took)
	case porcupine.Unknown:
		c.add(name, true, "%d operations: porcupine found no violation within %.0f s (inconclusive, not a failure)",
			len(ops), time.Duration(c.p.LinearTimeout).Seconds())
	default:
		var longest []int
		for _, part := range info.PartialLinearizations() {
			for _, l := range part {
				if len(l) > len(longest) {
					longest = l
				}
			}
		}
		c.add(name, false, "%d operations NOT linearizable on a counter from %d%s: the longest linearizable prefix "+
			"has %d operations (porcupine); %s", len(ops), start, what, len(longest),
			linEvidence(ops, longest, start, remMode, append(append([]rec{}, rs...), rst...)))
	}
}

// linEvidence: where the longest linearizable prefix gets stuck: the states
// the model can be in after it, and the first operations (by return) left
// out of it, the one that cannot be placed among them.
func linEvidence(ops []porcupine.Operation, prefix []int, start int64, remMode int, recs []rec) string {
	m := counterModel(start, remMode)
	states := m.Init() // the set of states the nondeterministic model may be in
	in := map[int]bool{}
	for _, k := range prefix {
		in[k] = true
		if ok, next := m.Step(states, ops[k].Input, ops[k].Output); ok {
			states = next
		}
	}
	var rest []int
	for k := range ops {
		if !in[k] {
			rest = append(rest, k)
		}
	}
	sort.Slice(rest, func(a, b int) bool { return ops[rest[a]].Return < ops[rest[b]].Return })
	var parts []string
	for i, k := range rest {
		if i == 3 {
			break
		}
		d := m.DescribeOperation(ops[k].Input, ops[k].Output)
		parts = append(parts, d+" = "+opStr(recs[k].op))
	}
	return fmt.Sprintf("after it the state is one of %v; not placed next (by return): %s", states,
		strings.Join(parts, "; "))
}

func sumQ(rs []rec, pred func(rec) bool) int64 {
	var s int64
	for _, r := range rs {
		if pred(r) {
			s += r.op.Qty
		}
	}
	return s
}

// restocked: the units of the SKU's restocks that satisfy @pred.
func (c *checker) restocked(sku string, pred func(rec) bool) int64 { return sumQ(c.rst[sku], pred) }

// remMode: how a 200's remaining is held against the model: exactly
// (levels=exact, not a lease view), at most (levels=after, no restocks),
// or not at all.
func (c *checker) remMode(leaseView, restocked bool) int {
	switch {
	case leaseView:
		return remIgnore
	case c.p.Levels != "after":
		return remExact
	case restocked:
		return remIgnore
	}
	return remAtMost
}

func isOK(r rec) bool      { return r.kind == kOK }
func isUnknown(r rec) bool { return r.kind == kUnknown || r.kind == kError }

// ---- single instance -------------------------------------------------------

func (c *checker) single() {
	I := c.p.Initial
	type epochData struct {
		rs    []rec
		begin *Level
	}
	per := map[string][]epochData{}
	nEpochs := 0
	for k := range c.begin {
		if k[0] == 0 && k[1]+1 > nEpochs {
			nEpochs = k[1] + 1
		}
	}
	for _, sku := range c.skus() {
		eds := make([]epochData, nEpochs)
		for e := range eds {
			eds[e].begin = c.begin[[2]int{0, e}][sku]
		}
		for _, r := range c.recs[sku] {
			if r.op.Epoch < nEpochs {
				eds[r.op.Epoch].rs = append(eds[r.op.Epoch].rs, r)
			}
		}
		per[sku] = eds
	}
	for _, sku := range c.skus() {
		c.statuses(sku, c.recs[sku])
	}
	for _, sku := range c.skus() {
		c.bodies(sku, c.recs[sku], true)
	}
	peeksOK := true
	for _, sku := range c.skus() {
		for e, ed := range per[sku] {
			if ed.begin == nil || v(ed.begin.Remaining)+v(ed.begin.Sold) != I {
				c.add(fmt.Sprintf("peek: %s epoch %d", sku, e), false, "no valid peek at the start of the epoch "+
					"(or remaining+sold != initial): %+v", ed.begin)
				peeksOK = false
			}
		}
	}
	if !peeksOK {
		return
	}
	for _, sku := range c.skus() {
		for e, ed := range per[sku] {
			c.units(fmt.Sprintf("units: %s epoch %d", sku, e), ed.rs, v(ed.begin.Sold), I)
		}
	}
	for _, sku := range c.skus() {
		for e, ed := range per[sku] {
			c.linearizable(fmt.Sprintf("linearizable: %s epoch %d", sku, e), ed.rs, nil, v(ed.begin.Remaining),
				c.remMode(false, false), nil, false, "")
		}
	}
	for _, sku := range c.skus() {
		for e, ed := range per[sku] {
			start := v(ed.begin.Remaining)
			c.soldOut409(fmt.Sprintf("409: %s epoch %d", sku, e), ed.rs, func(rec) int64 { return start },
				func(rec) int64 { return 0 })
		}
	}
	// crash: every epoch that ended with a kill -9
	for _, sku := range c.skus() {
		for e := 0; e+1 < len(per[sku]); e++ {
			if _, killed := c.killAt[[2]int{0, e}]; !killed {
				continue
			}
			ed, next := per[sku][e], per[sku][e+1]
			b, R := v(ed.begin.Sold), v(next.begin.Sold)
			A, U := sumQ(ed.rs, isOK), sumQ(ed.rs, isUnknown)
			var maxS int64 = b
			for _, r := range ed.rs {
				if r.kind == kOK && r.sold() > maxS {
					maxS = r.sold()
				}
			}
			name := fmt.Sprintf("kill -9: %s epoch %d", sku, e)
			if R > b+A+U {
				c.add(name, false, "after the restart sold is %d, more than the %d before plus %d acknowledged plus %d "+
					"unanswered units", R, b, A, U)
				continue
			}
			if Durable(c.routeOf(sku)) {
				c.add(name, R >= maxS && R >= b+A, "after the restart sold %d >= %d (the highest level a 200 reported) "+
					"and >= %d + %d acknowledged units, <= + %d unanswered: every 200 survived", R, maxS, b, A, U)
				continue
			}
			lost := b + A - R
			if lost < 0 {
				lost = 0
			}
			c.add(name, lost <= c.p.CacheLossMax, "after the restart sold %d (before %d, acknowledged %d, unanswered %d): "+
				"%d acknowledged units not counted (write-behind; allowed %d)", R, b, A, U, lost, c.p.CacheLossMax)
		}
	}
	for _, sku := range c.skus() {
		last := len(per[sku]) - 1
		ed := per[sku][last]
		f := c.end[0][sku]
		name := "totals: " + sku
		if f == nil {
			c.add(name, false, "no final peek")
			continue
		}
		fs, fr, b := v(f.Sold), v(f.Remaining), v(ed.begin.Sold)
		A, U := sumQ(ed.rs, isOK), sumQ(ed.rs, isUnknown)
		var Aall int64
		for _, x := range per[sku] {
			Aall += sumQ(x.rs, isOK)
		}
		ok := fs+fr == I && fs <= I && A <= fs-b && fs-b <= A+U
		if Durable(c.routeOf(sku)) {
			ok = ok && Aall <= fs
		}
		c.add(name, ok, "final sold %d + remaining %d == %d; last epoch: acknowledged %d <= sold growth %d <= "+
			"acknowledged + unanswered %d; all epochs acknowledged %d", fs, fr, I, A, fs-b, A+U, Aall)
	}
	for _, sku := range c.skus() {
		f := c.end[0][sku]
		c.add("sold out: "+sku, f != nil && v(f.Remaining) == 0, "final remaining %d", v(f.Remaining))
	}
	for _, sku := range c.skus() {
		f, cl := c.end[0][sku], c.clean[sku]
		ok := f != nil && cl != nil && v(f.Sold) == v(cl.Sold) && v(f.Remaining) == v(cl.Remaining)
		c.add("clean restart: "+sku, ok, "after SIGTERM and a restart: sold %d remaining %d (before: %d, %d)",
			v(cl.Sold), v(cl.Remaining), v(f.Sold), v(f.Remaining))
	}
}

// ---- three instances --------------------------------------------------------

// restockChecks (multi): the restocks' answers, and that the run did its
// cycles (at least one restock applied per SKU when -restocks > 0).
func (c *checker) restockChecks() {
	if c.p.Restocks <= 0 && len(c.h.Restocks) == 0 {
		return
	}
	var missing, bad []string
	for _, sku := range c.skus() {
		okN := 0
		for _, r := range c.rst[sku] {
			switch r.kind {
			case kOK:
				okN++
			case kUnknown:
				if r.op.Status == 0 {
					if k, ok := c.killAt[[2]int{r.op.Instance, r.op.Epoch}]; ok && r.op.End >= k {
						continue
					}
				}
				bad = append(bad, opStr(r.op))
			default:
				bad = append(bad, opStr(r.op))
			}
		}
		if okN == 0 && c.p.Restocks > 0 {
			missing = append(missing, sku)
		}
	}
	var parts []string
	for _, sku := range c.skus() {
		var u, n int64
		for _, r := range c.rst[sku] {
			if r.kind == kOK {
				u += r.op.Qty
				n++
			}
		}
		parts = append(parts, fmt.Sprintf("%s %d (+%d)", sku, n, u))
	}
	detail := fmt.Sprintf("%d restocks sent, answered 200 per SKU: %s", len(c.h.Restocks), strings.Join(parts, ", "))
	if c.p.Restocks > 0 {
		c.add("scenario: restocks", len(missing) == 0, "sold out -> restock, up to %d cycles per SKU while every "+
			"instance kept buying: %s%s", c.p.Restocks, detail, map[bool]string{true: "",
			false: "; none applied for " + strings.Join(missing, ", ")}[len(missing) == 0])
	}
	d := fmt.Sprintf("%d restock answers 200 (or unanswered at the kill)", len(c.h.Restocks)-len(bad))
	if len(bad) > 0 {
		d = fmt.Sprintf("%d unexpected (counted as unknown outcomes if 5xx), first: %s", len(bad), bad[0])
	}
	c.add("statuses: restocks", len(bad) == 0, "%s", d)
}

func (c *checker) multi() {
	I, N := c.p.Initial, c.p.Instances
	B := c.p.StaleNs
	c.restockChecks()
	for _, sku := range c.skus() {
		c.statuses(sku, c.recs[sku])
	}
	for _, sku := range c.skus() {
		c.bodies(sku, c.recs[sku], Durable(c.routeOf(sku)))
	}
	// restock bounds per SKU: Rok units surely added, Rall possibly added
	rOK := func(sku string) int64 { return c.restocked(sku, isOK) }
	rAll := func(sku string) int64 { return c.restocked(sku, func(r rec) bool { return r.kind != kError }) }
	// the units known to be in before a 409 r: initial + the restocks
	// answered 200 more than B before r began (r cannot have missed them)
	startOf := func(sku string) func(rec) int64 {
		return func(r rec) int64 {
			return I + c.restocked(sku, func(x rec) bool { return x.kind == kOK && x.op.End+B < r.op.Start })
		}
	}
	restockNote := func(sku string) string {
		if len(c.rst[sku]) == 0 {
			return ""
		}
		return fmt.Sprintf(" (restocks: +%d applied, +%d more unknown)", rOK(sku), rAll(sku)-rOK(sku))
	}
	// Db: global
	for _, sku := range c.skus() {
		if !Durable(c.routeOf(sku)) {
			continue
		}
		rs := c.recs[sku]
		c.units("units: "+sku+" (all instances)", rs, 0, I+rAll(sku))
		c.linearizable("linearizable: "+sku+" (all instances)", rs, c.rst[sku], I,
			c.remMode(false, len(c.rst[sku]) > 0), nil, true,
			", strict (409 needs state < q at a point of [its call - B, its end]: sold out as of a version at most B old)")
		c.soldOut409("409: "+sku+" (all instances)", rs, startOf(sku), func(rec) int64 { return 0 })
		d := c.h.Docs[sku]
		A, U := sumQ(rs, isOK), sumQ(rs, isUnknown)
		if d == nil {
			c.add("mongo: "+sku, false, "no document")
			continue
		}
		tot := d.Stock + d.Sold + d.Lost
		c.add("mongo: "+sku, I+rOK(sku) <= tot && tot <= I+rAll(sku) && d.Lost == 0 && A <= d.Sold && d.Sold <= A+U,
			"stock %d + sold %d == %d + restocks in [%d, %d] (lost %d); acknowledged %d <= sold <= acknowledged + "+
				"unanswered %d", d.Stock, d.Sold, I, rOK(sku), rAll(sku), d.Lost, A, A+U)
	}
	// an instance down longer than this may have had its lease reclaimed
	// (--lease-ms 10 s): its units go to lost, the model's state does not
	// follow, so 409s are not checked then
	down := int64(0)
	for k, t := range c.killAt {
		if b, ok := c.backAt[k]; ok && b-t > down {
			down = b - t
		}
	}
	reclaimable := down > int64(8*time.Second)
	// the lease-backed SKUs
	for _, sku := range c.skus() {
		if Durable(c.routeOf(sku)) {
			continue
		}
		rs := c.recs[sku]
		d := c.h.Docs[sku]
		if d == nil {
			c.add("leases: "+sku, false, "no document")
			continue
		}
		okAll := true
		var parts []string
		var sumLease, held, Atot int64
		for j := 0; j < N; j++ {
			host := c.p.Hosts[j]
			l := d.Leases[host]
			Aj := sumQ(rs, func(r rec) bool { return r.op.Instance == j && isOK(r) })
			Uj := sumQ(rs, func(r rec) bool { return r.op.Instance == j && isUnknown(r) })
			hj := l.Granted - l.Sold - l.Returned
			sumLease += l.Sold
			held += hj
			Atot += Aj
			ok := Aj <= l.Sold && l.Sold <= Aj+Uj && hj == 0 && !l.Reclaimed
			okAll = okAll && ok
			s := fmt.Sprintf("%s: acknowledged %d <= lease sold %d <= +unanswered %d, held %d", host, Aj, l.Sold, Aj+Uj, hj)
			if !ok {
				s = "BAD " + s
			}
			parts = append(parts, s)
		}
		c.add("leases: "+sku, okAll, "%s", strings.Join(parts, "; "))
		tot := d.Stock + d.Sold + d.Lost + held
		c.add("conservation: "+sku, I+rOK(sku) <= tot && tot <= I+rAll(sku) && d.Sold == sumLease && Atot <= d.Sold &&
			d.Sold <= I+rAll(sku),
			"stock %d + sold %d + lost %d + held %d == %d%s; sold == sum of leases' sold %d; acknowledged %d <= sold "+
				"<= %d", d.Stock, d.Sold, d.Lost, held, I, restockNote(sku), sumLease, Atot, I+rAll(sku))
		slack := c.leaseSlack(sku, rs, d)
		if reclaimable {
			c.linearizable("linearizable: "+sku+" (all instances)", rs, c.rst[sku], I, remIgnore,
				func(rec) int64 { return math.MaxInt64 / 4 }, false,
				fmt.Sprintf(", 409s not checked: an instance was down %.1f s, its lease may have been reclaimed",
					float64(down)/1e9))
			c.add("409: "+sku+" (all instances)", true, "not checked: an instance was down %.1f s, its lease may "+
				"have been reclaimed", float64(down)/1e9)
			continue
		}
		var maxS int64
		for _, r := range rs {
			if r.kind == kSoldOut {
				if x := slack(r); x > maxS {
					maxS = x
				}
			}
		}
		c.linearizable("linearizable: "+sku+" (all instances)", rs, c.rst[sku], I, remIgnore, slack, false,
			fmt.Sprintf(", global (pool + leases); 409(q) on i iff state < q + S, S = (q-1) + sum_{j != i} "+
				"min(H(t) (x2 if j was killed or back < B before), granted_j - j's 200s done before it), "+
				"H(t) = %d + 2*ceil(restocked by t/8) (largest S %d)", c.p.LeaseHoldMax, maxS))
		c.soldOut409("409: "+sku+" (all instances)", rs, startOf(sku), slack)
	}
	// peeks: every instance shows at least the acknowledged units
	for _, sku := range c.skus() {
		A := sumQ(c.recs[sku], isOK)
		ok := true
		var parts []string
		max := I + rAll(sku)
		for j := 0; j < N; j++ {
			l := c.end[j][sku]
			if l == nil || v(l.Sold) < A || v(l.Sold) > max {
				ok = false
			}
			if l != nil {
				parts = append(parts, fmt.Sprintf("%d", v(l.Sold)))
			} else {
				parts = append(parts, "none")
			}
		}
		c.add("peeks: "+sku, ok, "sold on each instance %s >= acknowledged %d, <= %d", strings.Join(parts, ", "), A, max)
	}
}

// leaseSlack: S(r), the units that may be out of reach of a 409 r (q
// units, on instance i, from s to e). The server answers 409 only when i's
// own counter holds < q (so <= q-1 units) and the pool, as of a document
// version i had seen, held < q; a pool grown since (a restock, a lease
// returned) reaches i within B. So the global stock at the 409 is < q +
// S(r) where
//
//	S(r) = (q-1) + sum over j != i of hold_j(r)
//	hold_j(r) = min(H(e) (+ H(e) again if r overlaps [kill_j, restart_j + B]:
//	            the lease j held when killed, returned to the pool when it
//	            came back, which i may not have seen yet),
//	            granted_j - the units of j's 200s completed before s)
//	H(t) = -lease-hold-max (default 2*ceil(initial/8) + 3: two grants of at
//	       most 1/8 of the pool each, plus a quantity; docs/server.md)
//	       + 2*ceil(R(t)/8), R(t) = units of the restocks begun before t
//	       (the pool never exceeds initial + R(t))
//
// granted_j is the lease's cumulative grant as read after the run (>= what
// it was at r), and what j holds or returned lately is at most its grants
// less its sales (each of j's 200s was in j's ledger before its answer).
// A restock missed by i is not slack: the model stretches its window by B.
func (c *checker) leaseSlack(sku string, rs []rec, d *Doc) func(r rec) int64 {
	N := c.p.Instances
	B := c.p.StaleNs
	type done struct{ end, q int64 }
	per := make([][]done, N)
	for _, r := range rs {
		if r.kind == kOK && r.op.Instance < N {
			per[r.op.Instance] = append(per[r.op.Instance], done{r.op.End, r.op.Qty})
		}
	}
	prefix := make([][]int64, N)
	for j := range per {
		sort.Slice(per[j], func(a, b int) bool { return per[j][a].end < per[j][b].end })
		prefix[j] = make([]int64, len(per[j])+1)
		for k, x := range per[j] {
			prefix[j][k+1] = prefix[j][k] + x.q
		}
	}
	type win struct{ from, to int64 }
	downs := make([][]win, N)
	for k, t := range c.killAt {
		if k[0] >= N {
			continue
		}
		to := int64(math.MaxInt64 / 4)
		if b, ok := c.backAt[k]; ok {
			to = b + B
		}
		downs[k[0]] = append(downs[k[0]], win{t, to})
	}
	H := func(t int64) int64 {
		R := c.restocked(sku, func(x rec) bool { return x.kind != kError && x.op.Start < t })
		return c.p.LeaseHoldMax + 2*((R+7)/8)
	}
	return func(r rec) int64 {
		out := r.op.Qty - 1
		h0 := H(r.op.End)
		for j := 0; j < N; j++ {
			if j == r.op.Instance {
				continue
			}
			h := h0
			for _, w := range downs[j] {
				if r.op.Start <= w.to && r.op.End >= w.from {
					h += h0
					break
				}
			}
			if d != nil && j < len(c.p.Hosts) {
				l := d.Leases[c.p.Hosts[j]]
				k := sort.Search(len(per[j]), func(x int) bool { return per[j][x].end >= r.op.Start })
				if b := l.Granted - prefix[j][k]; b < h {
					h = b
				}
			}
			if h > 0 {
				out += h
			}
		}
		return out
	}
}
